"""PEFT (LoRA) bases: a `peft.get_peft_model(...)` model is cut like its base model, only its LoRA weights (and the
TRGL heads) train, and stages are exported as native models with the adapters merged and, for transformers, also as
PEFT adapters (`stage-XX/adapter`) over the base truncated to the stage's depth.

`peft` is an optional dependency (`pip install trgl_hf[peft]`); nothing here imports it unless a PEFT model is given.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

LORA_MARKER = "lora_"
"""Parameters whose name contains this are the adapters: the only backbone weights of a PEFT base that train."""


def is_peft_model(model: Any) -> bool:
    """Whether `model` is a `peft.PeftModel` (checked without importing peft)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap_peft_model(model: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The base task model of a LoRA `PeftModel` (the adapters injected in its layers) and the LoRA configuration.

    `modules_to_save` wrappers (e.g. the classifier of a `task_type="SEQ_CLS"` model) are replaced by their trainable
    copy: TRGL trains its own heads anyway.

    Raises:
        `ValueError`: for several adapters, or an adapter type other than LoRA (prompt tuning and the like do not
            live in the residual blocks that TRGL cuts).
    """
    configs = model.peft_config
    if len(configs) != 1:
        raise ValueError(f"The PEFT model has {len(configs)} adapters ({sorted(configs)}): TRGL trains one; keep one.")
    name, config = next(iter(configs.items()))
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    if kind != "LORA":
        raise ValueError(
            f"trgl_hf trains LoRA adapters injected in the model's layers, not {kind}: use `peft.LoraConfig`."
        )
    base = model.get_base_model()
    from peft.utils import ModulesToSaveWrapper

    for parent in list(base.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, ModulesToSaveWrapper):
                setattr(parent, child_name, child.modules_to_save[name])
    settings = config.to_dict()
    settings["peft_type"] = kind
    settings["task_type"] = str(getattr(settings.get("task_type"), "value", settings.get("task_type") or "")) or None
    settings["modules_to_save"] = None
    settings["target_modules"] = _jsonable(settings.get("target_modules"))
    return base, {key: _jsonable(value) for key, value in settings.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


def inject_lora(model: nn.Module, settings: dict[str, Any]) -> nn.Module:
    """Inject the LoRA layers described by `settings` (as [`unwrap_peft_model`] returned them) into `model`, in
    place: how a saved whole TRGL model of a LoRA base is rebuilt before its weights are loaded."""
    from peft import LoraConfig, inject_adapter_in_model

    fields = set(LoraConfig.__dataclass_fields__)
    config = LoraConfig(**{k: v for k, v in settings.items() if k in fields and k not in ("peft_type", "task_type")})
    return inject_adapter_in_model(config, model)


def frozen_parameter_ids(backbone: nn.Module) -> set[int]:
    """The backbone weights of a LoRA base that never train: every one but the adapters."""
    return {id(param) for name, param in backbone.named_parameters() if LORA_MARKER not in name}


def has_lora_layers(module: nn.Module) -> bool:
    return any(LORA_MARKER in name for name, _ in module.named_parameters())


def merged_state_dict(module: nn.Module) -> dict[str, Any]:
    """`module.state_dict()` with every LoRA layer merged into its base weight and the PEFT names removed, as the
    module would be without adapters (computed on a copy: the trained module is untouched)."""
    if not has_lora_layers(module):
        return module.state_dict()
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(module)
    for layer in merged.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
    state = {}
    for key, value in merged.state_dict().items():
        if f".{LORA_MARKER}" in key:
            continue
        state[key.replace(".base_layer.", ".")] = value
    return state


ADAPTER_DIR = "adapter"
"""Subfolder of a stage folder holding the stage as a PEFT adapter."""


def _without_adapter_name(name: str) -> str:
    return re.sub(r"\.(lora_\w+)\.[^.]+(\.|$)", r".\1.*\2", name)


def unmerged_state_dict(module: nn.Module) -> dict[str, Any]:
    """`module.state_dict()` as the module was before its adapters: LoRA weights dropped, base weights renamed."""
    return {key.replace(".base_layer.", "."): value for key, value in module.state_dict().items()
            if f".{LORA_MARKER}" not in key}  # fmt: skip


def exports_stage_adapters(model: Any) -> bool:
    """Whether the stages of `model` also export as PEFT adapters: a LoRA base cut by the transformer adapter with
    native heads (an adapter applies to the native truncated model, whose head must be the stage's)."""
    from .adapters.transformer import TransformerAdapter

    native = model.config.aux_head == "native"
    return bool(model.config.peft_config) and isinstance(model.adapter, TransformerAdapter) and native


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
    from peft import LoraConfig, get_peft_model

    settings = model.config.peft_config
    if not exports_stage_adapters(model):
        raise ValueError("Only the stages of a transformer trained on a LoRA base with native heads export as PEFT "
                         "adapters; the merged stage folder is the export of this model.")  # fmt: skip
    merged = model.export_stage(stage)
    head_keys = set(merged_state_dict(model.heads[stage - 1]))
    prefix = merged.base_model_prefix
    base_weights = unmerged_state_dict(model.backbone)
    state = {key: value if key in head_keys else base_weights[key[len(prefix) + 1 :]]
             for key, value in merged.state_dict().items()}  # fmt: skip
    truncated = copy.deepcopy(merged)
    truncated.load_state_dict(state, strict=True)
    head_modules = sorted({key.rsplit(".", 1)[0] for key in head_keys})
    fields = set(LoraConfig.__dataclass_fields__) - {"peft_type", "modules_to_save", "exclude_modules"}
    config = LoraConfig(**{k: v for k, v in settings.items() if k in fields}, modules_to_save=head_modules,
                        exclude_modules=head_modules)  # fmt: skip
    adapted = get_peft_model(truncated, config)
    trained = {_without_adapter_name(name): param for name, param in model.backbone.named_parameters()
               if LORA_MARKER in name}  # fmt: skip
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if LORA_MARKER not in name:
                continue
            key = _without_adapter_name(name.removeprefix("base_model.model.").removeprefix(prefix + "."))
            param.copy_(trained[key])
    adapted.eval()
    probe = {name: value.cpu() for name, value in model.adapter.probe_inputs(model.config.image_size).items()}
    with torch.no_grad():
        expected, got = merged(**probe).logits, adapted(**probe).logits
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()) + 1e-6):
        raise RuntimeError(
            f"The PEFT adapter of stage {stage} does not reproduce the merged stage (max difference "
            f"{float((got - expected).abs().max()):.3g}); it was not written. Use the merged stage folder."
        )
    directory = Path(directory)
    adapted.save_pretrained(directory)
    adapter_config = json.loads((directory / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = None
    (directory / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True))
    return {
        "folder": ADAPTER_DIR,
        "base_model": model.config.base_model_name_or_path,
        "num_hidden_layers": merged.config.num_hidden_layers,
        "num_labels": merged.config.num_labels,
        "auto_class": type(merged).__name__,
    }


__all__ = [
    "ADAPTER_DIR",
    "frozen_parameter_ids",
    "inject_lora",
    "is_peft_model",
    "exports_stage_adapters",
    "merged_state_dict",
    "save_stage_adapter",
    "unmerged_state_dict",
    "unwrap_peft_model",
]
