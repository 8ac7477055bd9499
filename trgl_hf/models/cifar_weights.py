"""Load the pretrained CIFAR-10 ResNets of akamaster/pytorch_resnet_cifar10 into [`CifarResNetForImageClassification`].

The checkpoints (`resnet20-12fca82f.th`, `resnet32-d509ac18.th`, ...; BSD-2-Clause, Copyright (c) 2018 Yerlan
Idelbayev) are `{"state_dict": ..., "best_prec1": ...}` dicts saved from a `DataParallel` model, so their keys start
with `module.`: `conv1.weight`, `bn1.*`, `layer{1,2,3}.{j}.{conv1,bn1,conv2,bn2}.*` and `linear.{weight,bias}`.
"""

import os
import re

import torch

from .configuration_cifar_resnet import CifarResNetConfig
from .modeling_cifar_resnet import CifarResNetForImageClassification

__all__ = ["AKAMASTER_NORMALIZATION", "load_akamaster_resnet"]

AKAMASTER_NORMALIZATION = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
"""Input normalization of the akamaster models: RGB scaled to [0, 1], then `(x - mean) / std` per channel."""

_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_NUM_STAGES = 3
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_STEM_RE = re.compile(r"^(conv1|bn1)\.(\w+)$")
_BLOCK_RE = re.compile(r"^layer(\d+)\.(\d+)\.(conv1|bn1|conv2|bn2)\.(\w+)$")
_HEAD_RE = re.compile(r"^linear\.(weight|bias)$")


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load `path` and return its state dict with the `module.` prefixes removed."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # unpickling / zip errors: not a torch checkpoint
        raise ValueError(f"{os.fspath(path)!r} is not a readable PyTorch checkpoint: {err}") from err
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        state_dict = checkpoint["state_dict"]
    else:
        state_dict = checkpoint
    if (
        not isinstance(state_dict, dict)
        or not state_dict
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items())
    ):
        raise ValueError(
            f"{os.fspath(path)!r} is not an akamaster CIFAR ResNet checkpoint: expected a dict with a 'state_dict' "
            "mapping parameter names to tensors."
        )
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _convert_state_dict(state_dict: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], int]:
    """Rename akamaster keys to [`CifarResNetForImageClassification`] keys; also return the blocks per stage `n`."""
    converted = {}
    blocks: dict[int, set[int]] = {stage: set() for stage in range(1, _NUM_STAGES + 1)}
    unknown = []
    for key, value in state_dict.items():
        if match := _STEM_RE.match(key):
            module, suffix = match.groups()
            if module == "conv1" and suffix != "weight" or module == "bn1" and suffix not in _BN_SUFFIXES:
                unknown.append(key)
                continue
            submodule = "convolution" if module == "conv1" else "normalization"
            converted[f"resnet.embedder.embedder.{submodule}.{suffix}"] = value
        elif match := _BLOCK_RE.match(key):
            stage, block, module, suffix = match.groups()
            stage, block = int(stage), int(block)
            if stage not in blocks or (module.startswith("conv") and suffix != "weight"):
                unknown.append(key)
                continue
            if module.startswith("bn") and suffix not in _BN_SUFFIXES:
                unknown.append(key)
                continue
            blocks[stage].add(block)
            conv_index = int(module[-1]) - 1  # conv1/bn1 -> layer.0, conv2/bn2 -> layer.1
            submodule = "convolution" if module.startswith("conv") else "normalization"
            converted[f"resnet.encoder.stages.{stage - 1}.layers.{block}.layer.{conv_index}.{submodule}.{suffix}"] = (
                value
            )
        elif match := _HEAD_RE.match(key):
            converted[f"classifier.1.{match.group(1)}"] = value
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ValueError(
            f"{source!r} is not an akamaster CIFAR ResNet checkpoint: unexpected keys {shown} (expected conv1, bn1, "
            "layer{1,2,3}.<block>.{conv1,bn1,conv2,bn2} and linear)."
        )
    counts = {stage: len(indices) for stage, indices in blocks.items()}
    n = counts[1]
    if (
        n == 0
        or any(count != n for count in counts.values())
        or any(indices != set(range(n)) for indices in blocks.values())
    ):
        raise ValueError(
            f"{source!r} is not an akamaster CIFAR ResNet checkpoint: expected the same number n >= 1 of blocks "
            f"numbered 0..n-1 in layer1, layer2 and layer3, got {dict(sorted(blocks.items()))}."
        )
    return converted, n


def load_akamaster_resnet(path: str | os.PathLike, num_labels: int = 10) -> CifarResNetForImageClassification:
    """
    Load a pretrained CIFAR-10 ResNet of akamaster/pytorch_resnet_cifar10 (ResNet-20/32/44/56/110/1202) into a
    [`CifarResNetForImageClassification`].

    The depth is inferred from the number of blocks per stage (`depth = 6n + 2`). All weights and batch-norm
    statistics are loaded strictly; only the `num_batches_tracked` counters, absent from these checkpoints, are set to
    0. With 10 labels, `config.id2label` holds the CIFAR-10 class names. The model expects RGB inputs scaled to
    [0, 1] and normalized with [`AKAMASTER_NORMALIZATION`].

    Args:
        path (`str` or `os.PathLike`):
            Path of the `.th` checkpoint (e.g. `resnet20-12fca82f.th`).
        num_labels (`int`, *optional*, defaults to 10):
            Number of classes of the checkpoint's linear head; must match the checkpoint.

    Returns:
        [`CifarResNetForImageClassification`]: the model, in eval mode, on the CPU.

    Raises:
        ValueError: if the file is not such a checkpoint, or its head does not have `num_labels` outputs.

    Example:

    ```python
    >>> import torch
    >>> from trgl_hf.models.cifar_weights import AKAMASTER_NORMALIZATION, load_akamaster_resnet

    >>> model = load_akamaster_resnet("models/resnet_cifar10_akamaster/resnet20-12fca82f.th")
    >>> images = torch.rand(8, 3, 32, 32)  # RGB in [0, 1]
    >>> mean = torch.tensor(AKAMASTER_NORMALIZATION["mean"]).view(1, 3, 1, 1)
    >>> std = torch.tensor(AKAMASTER_NORMALIZATION["std"]).view(1, 3, 1, 1)
    >>> with torch.no_grad():
    ...     logits = model((images - mean) / std).logits
    >>> logits.shape
    torch.Size([8, 10])
    >>> model.config.depths
    [3, 3, 3]
    ```
    """
    source = os.fspath(path)
    converted, n = _convert_state_dict(_read_state_dict(path), source)
    _check_head(converted, source, num_labels)
    model = CifarResNetForImageClassification(_cifar_config(6 * n + 2, num_labels))
    expected = model.state_dict()
    for key in _missing_counters(converted, expected, source, 6 * n + 2):
        converted[key] = torch.zeros_like(expected[key])
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _check_head(converted: dict[str, torch.Tensor], source: str, num_labels: int) -> None:
    """Refuse a checkpoint without a linear head of `num_labels` outputs."""
    head = converted.get("classifier.1.weight")
    if head is None or head.ndim != 2:
        raise ValueError(f"{source!r} is not an akamaster CIFAR ResNet checkpoint: no 'linear.weight' matrix.")
    if head.shape[0] != num_labels:
        raise ValueError(f"{source!r} has a head with {head.shape[0]} outputs, but num_labels={num_labels}.")


def _cifar_config(depth: int, num_labels: int) -> CifarResNetConfig:
    """The configuration of a CIFAR ResNet of `depth` layers (with the CIFAR-10 class names for 10 labels)."""
    label_kwargs = {}
    if num_labels == len(_CIFAR10_CLASSES):
        label_kwargs["id2label"] = dict(enumerate(_CIFAR10_CLASSES))
        label_kwargs["label2id"] = {name: i for i, name in enumerate(_CIFAR10_CLASSES)}
    return CifarResNetConfig.from_depth(depth, num_labels=num_labels, **label_kwargs)


def _missing_counters(
    converted: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str, depth: int
) -> list[str]:
    """The keys of `expected` the checkpoint lacks, which may only be `num_batches_tracked` counters; any other
    missing, unexpected or differently shaped tensor is refused."""
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    really_missing = [key for key in missing if not key.endswith(".num_batches_tracked")]
    if unexpected or really_missing:
        raise ValueError(
            f"{source!r} does not match a CIFAR ResNet-{depth}: missing {really_missing[:5]}, "
            f"unexpected {unexpected[:5]}."
        )
    mismatched = [key for key, value in converted.items() if value.shape != expected[key].shape]
    if mismatched:
        details = ", ".join(f"{k}: {tuple(converted[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched[:3])
        raise ValueError(f"{source!r} does not match a CIFAR ResNet-{depth}: shape mismatch for {details}.")
    return missing
