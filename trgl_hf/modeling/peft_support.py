"""PEFT (LoRA) bases: a `peft.get_peft_model(...)` model is cut like its base model, only its LoRA weights (and the
TRGL heads) train, and stages are exported as native models with the adapters merged (`merged_state_dict`); the
export of stages as PEFT adapters is `trgl_hf.export.peft_adapters`.

`peft` is an optional dependency (`pip install trgl_hf[peft]`); nothing here imports it unless a PEFT model is given.
"""

from __future__ import annotations

import copy
from typing import Any

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


__all__ = [
    "LORA_MARKER",
    "frozen_parameter_ids",
    "has_lora_layers",
    "inject_lora",
    "is_peft_model",
    "merged_state_dict",
    "unwrap_peft_model",
]
