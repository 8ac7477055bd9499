"""Model-family adapters: how each supported family is cut into a stem, residual blocks and heads."""

from __future__ import annotations

from torch import nn

from .base import BlockProbe, ModelAdapter
from .resnet import ResNetAdapter
from .swin import SwinAdapter
from .transformer import TransformerAdapter

ADAPTERS: dict[str, type[ModelAdapter]] = {
    ResNetAdapter.family: ResNetAdapter,
    SwinAdapter.family: SwinAdapter,
    TransformerAdapter.family: TransformerAdapter,
}


def supported_families() -> list[str]:
    """Names of the model families the library can cut."""
    return sorted(ADAPTERS)


def adapter_class_for(model: nn.Module | None = None, family: str | None = None) -> type[ModelAdapter]:
    """Find the adapter of a family by name, or by probing `model`.

    Args:
        model (`nn.Module`, *optional*): a task model or backbone to probe.
        family (`str`, *optional*): a family name (takes precedence over probing).

    Returns:
        `type[ModelAdapter]`: the adapter class.

    Raises:
        `ValueError`: when the family is unknown or no adapter recognises the model.
    """
    if family is not None:
        if family not in ADAPTERS:
            raise ValueError(f"Unknown model family {family!r}; supported families: {supported_families()}.")
        return ADAPTERS[family]
    for adapter_class in ADAPTERS.values():
        if model is not None and adapter_class.can_cut(model):
            return adapter_class
    raise ValueError(
        f"trgl_hf cannot cut a {type(model).__name__}: no residual blocks of a supported family were found. "
        f"Supported families: {supported_families()}."
    )


__all__ = ["ADAPTERS", "BlockProbe", "ModelAdapter", "adapter_class_for", "supported_families"]
