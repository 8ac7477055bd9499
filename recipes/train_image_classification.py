"""Train an image classifier module-wise with TRGL (ResNet, CIFAR ResNet, ViT), like transformers' example scripts.

    accelerate launch recipes/train_image_classification.py recipes/configs/cifar_resnet20_small.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/train_image_classification.py --dataset_name digits ...

Writes `output_dir/stage-XX` (one loadable model per module), `module_metrics.json` and `module_accuracy.png`.

Every stage carries the class names (`id2label`, from the label column's `ClassLabel` feature or `--class_names`) and
the image processor whose output the recipe evaluates on (the pretrained model's own with `--model_name_or_path`,
otherwise a `ViTImageProcessor` with the images' size, rescaling by 1/255 and `--mean` / `--std`), so
`pipeline("image-classification", model=stage_dir)` gives on a picture the logits the recipe measured. Digits models
take RGB (three equal channels) because `pipeline()` converts every picture to RGB; a digit picture is the 8x8
grayscale image with pixel = 15 x intensity (`common.digits_image`).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from common import (
    TRGLArguments,
    class_names,
    digits_for_pipeline,
    label_maps,
    logger,
    parse,
    setup_logging,
    vit_image_processor,
    write_results,
)
from datasets import DatasetDict, load_dataset
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    set_seed,
)

from trgl_hf import (
    CifarResNetConfig,
    CifarResNetForImageClassification,
    TRGLModel,
    TRGLTrainer,
    TRGLTrainingArguments,
    load_digits_dataset,
)


@dataclass
class ModelArguments:
    """Which model to cut: a Hub id / local path, or one built from a config."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Hub id or local path of a model."})
    model_type: str = field(default="cifar_resnet", metadata={"help": "From scratch: cifar_resnet, resnet or vit."})
    depth: int = field(default=20, metadata={"help": "CIFAR ResNet depth (20, 32, 44, 56, 110)."})
    patch_size: int = field(default=4, metadata={"help": "ViT patch size."})
    hidden_size: int = field(default=64, metadata={"help": "ViT hidden size."})
    num_hidden_layers: int = field(default=8, metadata={"help": "ViT depth."})


@dataclass
class DataArguments:
    """Which data: `digits` (scikit-learn, offline), a local folder of parquet files / an imagefolder, or a Hub id."""

    dataset_name: str = field(default="digits", metadata={"help": "'digits', a local folder, or a Hub dataset id."})
    image_column: str = field(default="img", metadata={"help": "Image column of parquet / Hub datasets."})
    label_column: str = field(default="label", metadata={"help": "Label column."})
    class_names: str | None = field(
        default=None,
        metadata={"help": "Comma-separated class names, one per class id (default: the ClassLabel's names)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N validation examples."})
    validation_size: int = field(default=1000, metadata={"help": "Examples carved from train for validation."})
    augment: bool = field(default=True, metadata={"help": "Random crop (padding 4) and horizontal flip."})
    mean: list[float] | None = field(
        default=None,
        metadata={"help": "Channel mean (default: the pretrained model's image processor's, else CIFAR-10's)."},
    )
    std: list[float] | None = field(
        default=None,
        metadata={"help": "Channel std (default: the pretrained model's image processor's, else CIFAR-10's)."},
    )


CIFAR10_MEAN = [0.4913, 0.4821, 0.4465]
CIFAR10_STD = [0.2452, 0.2428, 0.2606]


def image_processor(model_name_or_path: str | None, data: DataArguments, height: int, width: int):
    """The processor that turns an RGB picture into the model's `pixel_values`: the pretrained model's own when it has
    one (with `--mean` / `--std` when given), else resize to the images' size, rescale by 1/255 and normalise."""
    if model_name_or_path:
        try:
            processor = AutoImageProcessor.from_pretrained(model_name_or_path)
        except (OSError, ValueError):
            logger.info("%s has no image processor: building one from the data.", model_name_or_path)
        else:
            processor.image_mean = data.mean or getattr(processor, "image_mean", None)
            processor.image_std = data.std or getattr(processor, "image_std", None)
            return processor
    mean, std = data.mean or CIFAR10_MEAN, data.std or CIFAR10_STD
    return vit_image_processor(size={"height": height, "width": width}, image_mean=mean, image_std=std)


def load_splits(data: DataArguments, model_name_or_path: str | None, seed: int):
    """Return train / validation / test splits with `pixel_values` and `labels`, the class names and the image
    processor whose output the evaluation splits hold (a picture through `pipeline()` gets exactly that)."""
    if data.dataset_name == "digits":
        splits, processor = digits_for_pipeline(load_digits_dataset(seed=seed))
        return splits, class_names(splits["train"], "labels", data.class_names), processor
    if os.path.isdir(data.dataset_name):
        files = {s: sorted(glob.glob(os.path.join(data.dataset_name, f"{s}-*.parquet"))) for s in ("train", "test")}
        if files["train"]:
            raw = load_dataset("parquet", data_files={k: v for k, v in files.items() if v})
        else:
            raw = load_dataset("imagefolder", data_dir=data.dataset_name)
    else:
        raw = load_dataset(data.dataset_name)
    train = raw["train"]
    names = class_names(train, data.label_column, data.class_names)
    held = train.select(range(len(train) - data.validation_size, len(train)))
    train = train.select(range(len(train) - data.validation_size))
    if data.max_train_samples:
        train = train.select(range(min(data.max_train_samples, len(train))))
    if data.max_eval_samples:
        held = held.select(range(min(data.max_eval_samples, len(held))))
    splits = DatasetDict(train=train, validation=held, **({"test": raw["test"]} if "test" in raw else {}))
    height, width = np.asarray(held[0][data.image_column].convert("RGB")).shape[:2]
    processor = image_processor(model_name_or_path, data, height, width)

    size = getattr(processor, "size", None)
    target = (getattr(size, "width", None), getattr(size, "height", None))

    def to_tensor(images: list) -> torch.Tensor:
        # What `pipeline("image-classification")` does: `load_image` converts to RGB, then the processor runs.
        rgb = [image.convert("RGB") for image in images]
        # Resizing an image to the size it has is the identity; skipping it halves the processor's time.
        same_size = {"do_resize": False} if all(image.size == target for image in rgb) else {}
        return processor(rgb, return_tensors="pt", **same_size)["pixel_values"]

    def augment(pixels: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(pixels, (4, 4, 4, 4))
        size = pixels.shape[-1]
        out = torch.empty_like(pixels)
        for i in range(len(pixels)):
            top, left = np.random.randint(0, 9, size=2)
            crop = padded[i, :, top : top + size, left : left + size]
            out[i] = crop.flip(-1) if np.random.rand() < 0.5 else crop
        return out

    def train_transform(batch: dict) -> dict:
        pixels = to_tensor(batch[data.image_column])
        return {"pixel_values": augment(pixels) if data.augment else pixels, "labels": batch[data.label_column]}

    def eval_transform(batch: dict) -> dict:
        return {"pixel_values": to_tensor(batch[data.image_column]), "labels": batch[data.label_column]}

    splits["train"].set_transform(train_transform)
    for name in splits:
        if name != "train":
            splits[name].set_transform(eval_transform)
    return splits, names, processor


def build_model(model_args: ModelArguments, names: list[str], channels: int, image_size: int):
    labels = {"num_labels": len(names), **label_maps(names)}
    if model_args.model_name_or_path:
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=True, **labels
        )
    if model_args.model_type == "cifar_resnet":
        config = CifarResNetConfig.from_depth(model_args.depth, num_channels=channels, image_size=image_size, **labels)
        return CifarResNetForImageClassification(config)
    if model_args.model_type == "resnet":
        config = ResNetConfig(
            num_channels=channels, embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[2, 2, 2, 2],
            layer_type="basic", downsample_in_first_stage=False, **labels,
        )  # fmt: skip
        return ResNetForImageClassification(config)
    if model_args.model_type == "vit":
        config = ViTConfig(
            image_size=image_size, patch_size=model_args.patch_size, num_channels=channels,
            hidden_size=model_args.hidden_size, num_hidden_layers=model_args.num_hidden_layers,
            num_attention_heads=4, intermediate_size=2 * model_args.hidden_size,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **labels,
        )  # fmt: skip
        return ViTForImageClassification(config)
    raise ValueError(f"Unknown --model_type {model_args.model_type!r}: use cifar_resnet, resnet or vit.")


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, trgl_args, training_args = parse(
        (ModelArguments, DataArguments, TRGLArguments, TRGLTrainingArguments), argv
    )
    training_args.remove_unused_columns = False
    setup_logging(training_args)
    set_seed(training_args.seed)
    splits, names, processor = load_splits(data_args, model_args.model_name_or_path, training_args.seed)
    channels, image_size, _ = splits["validation"][0]["pixel_values"].shape
    base = build_model(model_args, names, channels, image_size)
    model = TRGLModel.from_base(base, trgl_args.to_config(image_size=image_size))
    logger.info("Cut %s into %d modules (blocks per module: %s).", type(base).__name__, model.num_modules,
                model.config.split)  # fmt: skip
    trainer = TRGLTrainer(
        model=model, args=training_args, train_dataset=splits["train"], eval_dataset=splits["validation"],
        processing_class=processor,
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {"eval": trainer.evaluate()}
    if "test" in splits:
        metrics["test"] = trainer.evaluate(splits["test"], metric_key_prefix="test")
    write_results(trainer, metrics, "accuracy")
    return metrics


if __name__ == "__main__":
    main()
