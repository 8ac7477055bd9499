"""A model whose parameters FSDP2 sharded (`trgl_hf.distributed.fsdp` shards it): recognising it and gathering its full
weights, so that it saves (`TRGLModel.save_pretrained`) and exports as an unsharded model.

Pure torch, imported lazily: the model code (and so a saved model's remote code) needs it without the trainer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` holds FSDP2 (DTensor) parameters."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(param, DTensor) for param in model.parameters())


def is_dtensor(value: Any) -> bool:
    """Whether `value` is a DTensor (a parameter or optimizer state sharded by FSDP2)."""
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def reshard_all(model: nn.Module) -> None:
    """Free every unit's gathered parameters (so that every process sees its sharded parameters)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextmanager
def full_parameters(model: nn.Module, keep: bool) -> Iterator[None]:
    """Every process gathers the full weights of a sharded `model` (a collective: all must enter); where `keep`
    (the writing process), the model holds them as plain CPU parameters until the context ends, so it saves and
    exports as an unsharded model. Nothing happens for a model that is not sharded."""
    if not is_sharded(model):
        yield
        return
    reshard_all(model)
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    gathered: dict[int, nn.Parameter] = {}
    with torch.no_grad():
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is None or not is_dtensor(param):
                    continue
                if id(param) not in gathered:
                    full = param.full_tensor()
                    gathered[id(param)] = nn.Parameter(full.cpu(), requires_grad=param.requires_grad) if keep else None
                if keep:
                    swapped.append((module, name, param))
                    module._parameters[name] = gathered[id(param)]
    try:
        yield
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param


__all__ = ["full_parameters", "is_dtensor", "is_sharded", "reshard_all"]
