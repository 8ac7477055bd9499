"""Shared pieces of the recipes: argument dataclasses, parsing (CLI or a YAML/JSON file), results and plots."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import transformers  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from trgl_hf import TRGLConfig, TRGLTrainingArguments  # noqa: E402

logger = logging.getLogger("trgl_hf.recipes")


@dataclass
class TRGLArguments:
    """How the model is cut and which local objective each module minimises (fields of `TRGLConfig`)."""

    num_modules: int = field(default=4, metadata={"help": "Number of modules K."})
    tau: float = field(default=10.0, metadata={"help": "Transport step size (tau/2 for the first half of modules)."})
    use_transport: bool = field(default=True, metadata={"help": "False trains the VanGL baseline."})
    tau_schedule: str = field(default="halves", metadata={"help": "'halves', 'constant' or 'multipliers'."})
    split_policy: str = field(default="equal", metadata={"help": "'equal' or 'balanced' (activation memory)."})
    aux_head: str | None = field(default=None, metadata={"help": "'conv', 'linear' (ResNets) or 'native'."})
    head_pool_size: int = field(default=2, metadata={"help": "Pooled side of the conv head."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of every module's loss."})

    def to_config(self, **extra: Any) -> TRGLConfig:
        """The `TRGLConfig` these arguments describe."""
        return TRGLConfig(
            num_modules=self.num_modules, tau=self.tau, use_transport=self.use_transport,
            tau_schedule=self.tau_schedule, split_policy=self.split_policy, aux_head=self.aux_head,
            head_pool_size=self.head_pool_size, label_smoothing=self.label_smoothing, **extra,
        )  # fmt: skip


def parse(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """Parse the recipe's dataclasses from the command line, or from one `.json` / `.yaml` file."""
    argv = sys.argv[1:] if argv is None else argv
    parser = HfArgumentParser(dataclass_types)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(training_args: TRGLTrainingArguments) -> None:
    """Log like the transformers examples: info on the main process, warnings elsewhere."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    logging.getLogger("trgl_hf").setLevel(level)
    transformers.utils.logging.set_verbosity(level)
    transformers.utils.logging.disable_progress_bar()


def write_results(trainer: Any, metrics: dict[str, dict[str, float]], metric: str) -> Path | None:
    """Write `module_metrics.json` and a PNG plot of `metric` per module (main process only).

    Args:
        trainer: the `TRGLTrainer` (its `output_dir` and process rank are used).
        metrics: split name -> metrics dict from `trainer.evaluate(..., metric_key_prefix=split)`.
        metric: per-module metric to plot, e.g. `"accuracy"` or `"perplexity"`.

    Returns:
        The JSON path, or None on non-main processes.
    """
    if not trainer.is_world_process_zero():
        return None
    output_dir = Path(trainer.args.output_dir)
    num_modules = trainer.model.num_modules
    table = {
        split: [values.get(f"{split}_module_{k}_{metric}") for k in range(1, num_modules + 1)]
        for split, values in metrics.items()
    }
    payload = {"metric": metric, "per_module": table, "raw": metrics, "split": trainer.model.config.split}
    path = output_dir / "module_metrics.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.5))
    for split, values in table.items():
        axis.plot(range(1, num_modules + 1), values, marker="o", label=split)
    axis.set_xlabel("module")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} per module ({trainer.args.trgl_mode})")
    axis.legend()
    figure.tight_layout()
    figure.savefig(output_dir / f"module_{metric}.png", dpi=120)
    plt.close(figure)
    for split, values in table.items():
        logger.info("%s %s per module: %s", split, metric, ", ".join(f"{v:.4f}" for v in values if v is not None))
    return path
