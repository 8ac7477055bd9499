"""Stages of a TRGL model trained on a LoRA base, exported as PEFT adapters (`stage-XX/adapter`) over the base model
truncated to the stage's depth (transformers with native heads).

`peft` is an optional dependency (`pip install trgl_hf[peft]`); it is imported only when an adapter is written.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..modeling.architectures.transformer import TransformerCutter
from ..modeling.peft_support import LORA_MARKER, merged_state_dict

ADAPTER_DIR = "adapter"
"""Subfolder of a stage folder holding the stage as a PEFT adapter."""


def _without_adapter_name(name: str) -> str:
    return re.sub(r"\.(lora_\w+)\.[^.]+(\.|$)", r".\1.*\2", name)


def unmerged_state_dict(module: nn.Module) -> dict[str, Any]:
    """`module.state_dict()` as the module was before its adapters: LoRA weights dropped, base weights renamed."""
    return {key.replace(".base_layer.", "."): value for key, value in module.state_dict().items()
            if f".{LORA_MARKER}" not in key}  # fmt: skip


def exports_stage_adapters(model: Any) -> bool:
    """Whether the stages of `model` also export as PEFT adapters: a LoRA base cut by the transformer cutter with
    native heads (an adapter applies to the native truncated model, whose head must be the stage's)."""
    native = model.config.aux_head == "native"
    return bool(model.config.peft_config) and isinstance(model.adapter, TransformerCutter) and native


def save_stage_adapter(model: Any, stage: int, directory: str | Path) -> dict[str, Any]:
    """Write stage `stage` of a TRGL model trained on a LoRA base as a PEFT adapter in `directory`.

    The adapter holds the LoRA weights of the stage's blocks and, as `modules_to_save`, the trained head; it applies
    to the base model truncated to the stage's depth (the card's snippet loads it with `num_hidden_layers=n`).
    `adapter_config.json` names no base model on purpose: `AutoPeftModel` would load the full-depth base, whose
    deeper, un-adapted layers would silently change every output. Before writing, the adapter's logits are checked
    against the merged stage's.

    Returns:
        `dict`: how to load it (`base_model`, `num_hidden_layers`, `num_labels`, `folder`), for `trgl_stage.json`.

    Raises:
        `ValueError`: the model has no LoRA adapters or is not a transformer (the merged stage is the export then).
    """
    if not exports_stage_adapters(model):
        raise ValueError("Only the stages of a transformer trained on a LoRA base with native heads export as PEFT "
                         "adapters; the merged stage folder is the export of this model.")  # fmt: skip
    merged = model.export_stage(stage)
    head_keys = set(merged_state_dict(model.heads[stage - 1]))
    adapted = _lora_model(_unmerged_copy(model, merged, head_keys), model.config.peft_config, head_keys)
    _copy_trained_lora(model, adapted, merged.base_model_prefix)
    adapted.eval()
    _check_reproduces(model, stage, merged, adapted)
    _save_without_base_model(adapted, Path(directory))
    return {
        "folder": ADAPTER_DIR,
        "base_model": model.config.base_model_name_or_path,
        "num_hidden_layers": merged.config.num_hidden_layers,
        "num_labels": merged.config.num_labels,
        "auto_class": type(merged).__name__,
    }


def _unmerged_copy(model: Any, merged: nn.Module, head_keys: set[str]) -> nn.Module:
    """A copy of the merged stage holding the base's weights as they were before LoRA (the trained head kept)."""
    prefix = merged.base_model_prefix
    base_weights = unmerged_state_dict(model.backbone)
    state = {key: value if key in head_keys else base_weights[key[len(prefix) + 1 :]]
             for key, value in merged.state_dict().items()}  # fmt: skip
    truncated = copy.deepcopy(merged)
    truncated.load_state_dict(state, strict=True)
    return truncated


def _lora_model(truncated: nn.Module, settings: dict[str, Any], head_keys: set[str]) -> nn.Module:
    """`truncated` wrapped with the run's LoRA settings, its head saved whole (`modules_to_save`) and not adapted."""
    from peft import LoraConfig, get_peft_model

    head_modules = sorted({key.rsplit(".", 1)[0] for key in head_keys})
    fields = set(LoraConfig.__dataclass_fields__) - {"peft_type", "modules_to_save", "exclude_modules"}
    config = LoraConfig(**{k: v for k, v in settings.items() if k in fields}, modules_to_save=head_modules,
                        exclude_modules=head_modules)  # fmt: skip
    return get_peft_model(truncated, config)


def _copy_trained_lora(model: Any, adapted: nn.Module, prefix: str) -> None:
    """Copy the LoRA weights the TRGL model trained into the matching parameters of `adapted`."""
    trained = {_without_adapter_name(name): param for name, param in model.backbone.named_parameters()
               if LORA_MARKER in name}  # fmt: skip
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if LORA_MARKER not in name:
                continue
            key = _without_adapter_name(name.removeprefix("base_model.model.").removeprefix(prefix + "."))
            param.copy_(trained[key])


def _check_reproduces(model: Any, stage: int, merged: nn.Module, adapted: nn.Module) -> None:
    """Refuse an adapter whose logits differ from the merged stage's on the model's probe inputs."""
    probe = {name: value.cpu() for name, value in model.adapter.probe_inputs(model.config.image_size).items()}
    with torch.no_grad():
        expected, got = merged(**probe).logits, adapted(**probe).logits
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()) + 1e-6):
        raise RuntimeError(
            f"The PEFT adapter of stage {stage} does not reproduce the merged stage (max difference "
            f"{float((got - expected).abs().max()):.3g}); it was not written. Use the merged stage folder."
        )


def _save_without_base_model(adapted: nn.Module, directory: Path) -> None:
    """Save the adapter with `base_model_name_or_path` cleared (see [`save_stage_adapter`] for why)."""
    adapted.save_pretrained(directory)
    adapter_config = json.loads((directory / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = None
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True))


__all__ = ["ADAPTER_DIR", "exports_stage_adapters", "save_stage_adapter", "unmerged_state_dict"]
