"""What a run writes besides its weights: each stage folder (with the processor, `trgl_stage.json`, a card and, for
LoRA bases, a PEFT adapter), the chosen stage as `save_model` writes it, and the run's own card."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..export.checkpointing import save_stage
from ..export.model_cards import PLOT_FILE, load_arguments, module_plot_svg, run_model_card
from ..export.peft_adapters import ADAPTER_DIR, exports_stage_adapters, save_stage_adapter
from ..export.stage_folders import STAGE_CARD_FILE, find_stage_folders
from .run_state import STATE_FILE

WEIGHT_FILE = re.compile(r"(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?")
"""Weight files (and shard indexes) that `from_pretrained` reads from a folder."""

CARD_SETTINGS = ("trgl_mode", "num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "weight_decay", "seed")  # fmt: skip
"""The training arguments a run's card lists."""

PACKAGED_BUILDERS = frozenset({"arrow", "audiofolder", "cache", "csv", "generator", "imagefolder", "json", "pandas",
                               "parquet", "sql", "text", "videofolder", "webdataset", "xml"})  # fmt: skip


def dataset_name(dataset: Any) -> str | None:
    """The name a dataset carries (`info.dataset_name`), unless it only names a file format or a generator."""
    info = getattr(dataset, "info", None)
    name = (getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)) if info else None
    return None if not name or name in PACKAGED_BUILDERS else name


def run_facts(model: Any, args: Any, train_dataset: Any, stage_metrics: dict, fingerprint: str | None) -> dict:
    """What the stages' `trgl_stage.json` and the model cards record about the run."""
    return {
        "task": model.task.name,
        "base_model": model.config.base_model_name_or_path,
        "dataset": args.trgl_dataset_name or dataset_name(train_dataset),
        "trgl_mode": args.trgl_mode,
        "taus": model.transport_schedule.describe(),
        "use_transport": model.config.use_transport,
        "module_metrics": {str(stage): metrics for stage, metrics in sorted(stage_metrics.items())},
        "run_fingerprint": fingerprint,
    }


def write_stage(model: Any, stage: int, directory: str | os.PathLike, facts: dict, processor: Any = None) -> Path:
    """Export modules 1..`stage` with head `stage` (the model's own tensors, no copy) and write them with `processor`,
    `facts` and a model card to `directory`; a LoRA base's stage is also written as a PEFT adapter."""
    write_adapter = None
    if exports_stage_adapters(model):

        def write_adapter(staging: Path) -> dict[str, Any]:
            return {"peft_adapter": save_stage_adapter(model, stage, staging / ADAPTER_DIR)}

    exported = model.export_stage(stage, share_weights=True)
    return save_stage(exported, directory, stage, model.num_modules, facts, processor=processor,
                      write_extra=write_adapter)  # fmt: skip


def move_files_into(source: Path, target: Path, skip: set[str]) -> None:
    """Move every entry of `source` into `target` (each replaced atomically; a folder replaces the folder of the same
    name), except the names in `skip`."""
    for entry in sorted(source.iterdir()):
        if entry.name in skip:
            continue
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():
            shutil.rmtree(destination)
        os.replace(entry, destination)


def write_chosen_stage(target: Path, write: Any) -> None:
    """Write a stage into `target` as `Trainer.save_model` writes a model: `write(folder)` writes it to a staging
    folder, whose files then replace `target`'s (earlier weight files removed, so they never load instead). In a run's
    own folder, the run's card is kept."""
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".trgl-save-model.", dir=target))
    try:
        write(staging / "stage")
        run_card = (target / STATE_FILE).exists() and (target / STAGE_CARD_FILE).exists()
        for old in target.glob("*"):
            if old.is_file() and WEIGHT_FILE.fullmatch(old.name):
                old.unlink()
        move_files_into(staging / "stage", target, skip={STAGE_CARD_FILE} if run_card else set())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_run_card(root: Path, facts: dict, stage_metrics: dict, model: Any, args: Any) -> Path:
    """Write the run's card, `root/README.md`: settings, every module's metrics with a plot (`module_metrics.svg`)
    and how to load each stage."""
    facts = {**facts, "training": {name: getattr(args, name) for name in CARD_SETTINGS}}
    metric = model.task.selection_metric
    plot = module_plot_svg(stage_metrics, metric, f"{metric} per module ({args.trgl_mode})")
    if plot is not None:
        (root / PLOT_FILE).write_text(plot, encoding="utf-8")
    stages = {}
    for stage, folder in find_stage_folders(root).items():
        remote = bool(json.loads((folder / "config.json").read_text()).get("auto_map"))
        stages[stage] = load_arguments(str(folder), None, None, remote)
    run_model_card(facts, stages, PLOT_FILE if plot is not None else None).save(root / "README.md")
    return root / "README.md"


def run_card_files(root: Path) -> list[Path]:
    """The run card and its plot (when one was drawn), as [`write_run_card`] wrote them."""
    return [path for path in (root / "README.md", root / PLOT_FILE) if path.is_file()]
