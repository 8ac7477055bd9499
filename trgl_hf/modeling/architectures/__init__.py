"""How each supported architecture is cut into a stem, residual blocks and heads (see `registry`)."""

from __future__ import annotations

from .base import BlockProbe, ModelCutter
from .registry import REGISTRY, ArchitectureSpec, architecture_named, architecture_of, supported_architectures


def supported_families() -> list[str]:
    """Names of the cutter families (block structures) the library can cut: `resnet`, `transformer`, ..."""
    return sorted({spec.adapter.family for spec in REGISTRY.values()})


__all__ = [
    "REGISTRY",
    "ArchitectureSpec",
    "BlockProbe",
    "ModelCutter",
    "architecture_named",
    "architecture_of",
    "supported_architectures",
    "supported_families",
]
