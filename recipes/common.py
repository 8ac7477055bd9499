"""Shared pieces of the recipes: argument dataclasses, parsing (CLI or a YAML/JSON file), results and plots."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import transformers  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from trgl_hf import TRGLConfig, TRGLTrainingArguments  # noqa: E402

logger = logging.getLogger("trgl_hf.recipes")


@dataclass
class TRGLArguments:
    """How the model is cut and which local objective each module minimises (fields of `TRGLConfig`)."""

    num_modules: int = field(default=4, metadata={"help": "Number of modules K."})
    tau: float | None = field(
        default=None,
        metadata={"help": "Transport step size (tau/2 for the first half of modules); default: the library's (10, or "
                  "1000 relative to the branch energy for a pretrained base)."},
    )  # fmt: skip
    use_transport: bool = field(default=True, metadata={"help": "False trains the VanGL baseline."})
    tau_schedule: str = field(default="halves", metadata={"help": "'halves', 'constant' or 'multipliers'."})
    split_policy: str = field(default="equal", metadata={"help": "'equal' or 'balanced' (activation memory)."})
    aux_head: str | None = field(
        default=None, metadata={"help": "'conv', 'linear' (ResNets), 'native', 'mean' (text classifiers)."}
    )
    head_pool_size: int = field(default=2, metadata={"help": "Pooled side of the conv head."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of every module's loss."})

    def to_config(self, **extra: Any) -> TRGLConfig:
        """The `TRGLConfig` these arguments describe."""
        return TRGLConfig(
            num_modules=self.num_modules, tau=self.tau, use_transport=self.use_transport,
            tau_schedule=self.tau_schedule, split_policy=self.split_policy, aux_head=self.aux_head,
            head_pool_size=self.head_pool_size, label_smoothing=self.label_smoothing, **extra,
        )  # fmt: skip


def class_names(dataset: Any, label_column: str, option: str | None) -> list[str]:
    """The class names of a classification dataset: `--class_names` (comma-separated) when given, else the names of
    the label column's `ClassLabel` feature. (`--label_names` is taken: it is `TrainingArguments`' list of label
    input keys.)

    Args:
        dataset: the training split (a `datasets.Dataset`).
        label_column: the column holding the class ids.
        option: the value of `--class_names`, or None.

    Raises:
        ValueError: `--class_names` does not give one distinct, non-empty name per class (per class id of a column
            that is not a `ClassLabel`), or the column is not a `ClassLabel` and `--class_names` is missing.
    """
    from datasets import ClassLabel

    feature = dataset.features.get(label_column)
    if feature is None:
        raise ValueError(f"The dataset has no label column {label_column!r} (columns: {', '.join(dataset.features)}).")
    if option is None:
        if not isinstance(feature, ClassLabel):
            raise ValueError(
                f"The label column {label_column!r} is a {type(feature).__name__}, not a `ClassLabel`, so it names no "
                "classes: pass `--class_names` with one comma-separated name per class id (e.g. negative,positive)."
            )
        return [str(name) for name in feature.names]
    names = [name.strip() for name in option.split(",")]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise ValueError(f"`--class_names` must hold distinct, non-empty comma-separated names, got {option!r}.")
    given = f"`--class_names` gives {len(names)} names ({option!r}) but the label column {label_column!r}"
    if isinstance(feature, ClassLabel):
        if len(names) != feature.num_classes:
            raise ValueError(
                f"{given} has {feature.num_classes} classes ({', '.join(map(str, feature.names))}): give one name "
                "per class."
            )
        return names
    labels = np.asarray(dataset.with_format("numpy")[label_column])
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"{given} holds class ids {labels.min()} .. {labels.max()}: give one name per class id.")
    return names


def label_maps(names: list[str]) -> dict[str, dict]:
    """`id2label` / `label2id` for a model config (`from_pretrained(..., **label_maps(names))`)."""
    return {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}


def vit_image_processor(**kwargs: Any) -> Any:
    """A `ViTImageProcessor` (resize, rescale, normalise; saved as `ViTImageProcessor`, which `pipeline()` and
    `AutoImageProcessor` load), on the PIL backend where torchvision is not installed, as `AutoImageProcessor` does."""
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        from transformers import ViTImageProcessor as processor_class
    else:
        from transformers import ViTImageProcessorPil as processor_class
    return processor_class(do_convert_rgb=True, **kwargs)


# A digits image: pixel = 15 x the 0..16 intensity of scikit-learn's digits (0..240, white ink on black), the largest
# integer scale that fits uint8, so that rescaling by 1/240 gives back the intensity / 16 of `load_digits_dataset`
# exactly (1/255 could not: 255/16 is not an integer).
DIGITS_PIXEL_SCALE = 15


def digits_image(intensities: Any) -> Any:
    """The grayscale PIL image of one digit (8x8 intensities 0..16), as a user would give it to `pipeline()`."""
    from PIL import Image

    return Image.fromarray((DIGITS_PIXEL_SCALE * np.asarray(intensities, dtype=np.int64)).astype(np.uint8))


def digits_intensities(pixel_values: Any, low: float, high: float) -> np.ndarray:
    """The 0..16 integer intensities behind `load_digits_dataset` pixels (`low` / `high` are those of 0 and 16)."""
    return np.rint((np.asarray(pixel_values) - low) / (high - low) * 16).astype(np.int64)


def digits_for_pipeline(splits: Any) -> tuple[Any, Any]:
    """`load_digits_dataset` splits as RGB images and the image processor that maps a digit picture to them.

    A `pipeline("image-classification")` turns every image into RGB before its processor runs, so the model takes 3
    (equal) channels. The processor (resize to 8x8, rescale by 1 / 240, normalise with the training split's mean and
    std, which the library standardises with) maps `digits_image(intensities)` exactly to the library's pixels; the
    returned splits hold the processor's own output for those images, so a stage gives the same logits on a digit
    picture through `pipeline()` as on the recipe's `pixel_values`.

    Returns:
        The splits (`pixel_values` of shape `(3, 8, 8)`, `labels` with the `ClassLabel` names "0".."9", torch format)
        and the processor.

    Raises:
        RuntimeError: the library's pixels are not the standardised intensity / 16 this mapping assumes.
    """
    from datasets import Dataset, DatasetDict

    pixels = {name: np.asarray(split.with_format("numpy")["pixel_values"]) for name, split in splits.items()}
    low, high = float(pixels["train"].min()), float(pixels["train"].max())
    intensities = {name: digits_intensities(values, low, high) for name, values in pixels.items()}
    train = (intensities["train"] / 16.0).astype(np.float32)  # load_digits_dataset's own statistics, recomputed
    mean, std = float(train.mean()), float(train.std())
    processor = vit_image_processor(
        size={"height": 8, "width": 8}, rescale_factor=1 / (16 * DIGITS_PIXEL_SCALE), image_mean=[mean] * 3,
        image_std=[std] * 3,
    )  # fmt: skip
    converted = {}
    for name, split in splits.items():
        images = [digits_image(image[0]).convert("RGB") for image in intensities[name]]
        rgb = processor(images, return_tensors="np")["pixel_values"].astype(np.float32)
        if not np.allclose(rgb, np.repeat(pixels[name], 3, axis=1), rtol=0, atol=1e-5):
            raise RuntimeError(
                "load_digits_dataset's pixels are no longer the standardised intensity / 16 of the digits: update "
                "recipes/common.py:digits_for_pipeline, whose image processor must reproduce them."
            )
        columns = {"pixel_values": rgb, "labels": np.asarray(split.with_format("numpy")["labels"])}
        features = split.features.copy()
        converted[name] = Dataset.from_dict(columns, features=features).with_format("torch")
    return DatasetDict(converted), processor


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


def training_step_bytes(model: Any, inputs: dict[str, Any], trainable: Any = None) -> int:
    """Bytes of the tensors one SGD-with-momentum training step of `model` on `inputs` holds at its peak: the
    parameters that train, their gradients and momentum (3 x their size), plus every activation autograd saves for the
    backward (each storage once; parameters excluded). `trainable`: a TRGL model's 0-based module trained in this step
    (its frozen prefix runs without a graph, as in sequential training); None trains the whole model end-to-end.

    Measured on the model itself with one forward and backward; its weights, buffers (BatchNorm statistics),
    gradients and the random stream are left as they were.
    """
    import torch

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    was_training = model.training
    with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.train()
        if trainable is None:
            loss = model(**inputs).loss
            trained = [p for p in model.parameters() if p.requires_grad]
        else:
            with model.phase([trainable]):
                loss = model(**inputs).loss
                trained = [p for p in model.parameters() if p.requires_grad]
        del loss  # the graph's saved activations are counted; no backward, so no gradient is written
    model.train(was_training)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    return 3 * sum(p.numel() * p.element_size() for p in trained) + sum(saved.values())


def first_training_batch(trainer: Any) -> dict[str, Any]:
    """The model inputs of the trainer's first training batch, drawn without moving the random stream the run uses."""
    import torch

    with torch.random.fork_rng(devices=[]):
        batch = next(iter(trainer.get_train_dataloader()))
    return {name: value for name, value in batch.items() if name in ("pixel_values", "input_ids", "attention_mask",
                                                                      "labels")}  # fmt: skip
