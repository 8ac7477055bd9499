"""The data of an architecture registry entry: [`ArchitectureSpec`], the block layouts it names ([`StreamPoints`],
[`PostNorm`]) and the tails that compute a backbone's output after its last block.

Nothing here imports a cutter: the cutters (`base`, `transformer`, ...) take an `ArchitectureSpec`, and the registry
rows (`registry`) name a cutter class in each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class StreamPoints:
    """A block that adds its branches to the stream one after another.

    Args:
        names (`tuple[str, ...]`): submodules (relative to the block) whose first input is the stream between two
            branches, in call order; empty for a block with a single stream update (one branch, or parallel
            attention + MLP added together).
    """

    names: tuple[str, ...] = ()

    def describe(self) -> str:
        """What is penalised, for docs and error messages."""
        if not self.names:
            return "the block's single stream update (out - x)"
        return "each stream update: x -> input of " + " -> input of ".join(self.names) + " -> out"


@dataclass(frozen=True)
class PostNorm:
    """A post-LN block: each branch is added to the stream and the sum normalised (BERT).

    Args:
        names (`tuple[str, ...]`): the normalisations that close each branch (relative to the block), in call order.
    """

    names: tuple[str, ...]

    def describe(self) -> str:
        """What is penalised, for docs and error messages."""
        return "each branch before its norm: input of " + " / input of ".join(self.names) + " minus the stream"


Layout = StreamPoints | PostNorm
TailFunction = Callable[[nn.Module, torch.Tensor], dict[str, Any]]


def _optional(tail: nn.Module, name: str) -> nn.Module | None:
    try:
        return tail.get_submodule(name)
    except AttributeError:
        return None


def norm_then_pooler(*names: str) -> TailFunction:
    """Tail that applies the backbone's final modules `names` in order (those present), then its `pooler` if any."""

    def tail(modules: nn.Module, hidden: torch.Tensor) -> dict[str, Any]:
        for name in names:
            module = _optional(modules, name)
            if module is not None:
                hidden = module(hidden)
        pooler = _optional(modules, "pooler")
        return {"last_hidden_state": hidden, "pooler_output": pooler(hidden) if pooler is not None else None}

    return tail


def norm_then_first_token(name: str) -> TailFunction:
    """Tail of DINOv2: final norm; the pooled output is the class token."""

    def tail(modules: nn.Module, hidden: torch.Tensor) -> dict[str, Any]:
        hidden = modules.get_submodule(name)(hidden)
        return {"last_hidden_state": hidden, "pooler_output": hidden[:, 0]}

    return tail


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one architecture is cut and what its transport term penalises.

    Args:
        name (`str`): display name, e.g. `"GPT-2"`.
        model_types (`tuple[str, ...]`): the `config.model_type` values of this entry.
        adapter (`type`): the cutter class that cuts it (a [`ModelCutter`] subclass).
        classes (`dict[str, str]`): supported task classes and what their head predicts (`"classification"` or
            `"causal_lm"`).
        blocks (`str`): dotted path of the `nn.ModuleList` of residual blocks inside the backbone.
        layout (`Layout` or `Callable`): the residual layout of a block, or a function of the config giving it.
        tail_names (`tuple[str, ...]`): backbone modules that run after the last block (final norm, pooler, output
            projection); each module gets a copy of those present.
        tail (`Callable`): computes the backbone's output (`last_hidden_state`, `pooler_output`) from the tail modules
            and the last block's output.
        check (`Callable`, *optional*): returns why a configuration cannot be trained exactly, or None.
        penalised (`str`): what the transport term penalises, for the docs.
        fixed_image_size (`bool`): the position embeddings only fit `config.image_size` (inputs are checked).
    """

    name: str
    model_types: tuple[str, ...]
    adapter: type
    classes: dict[str, str]
    blocks: str = ""
    layout: Layout | Callable[[Any], Layout] = field(default_factory=StreamPoints)
    tail_names: tuple[str, ...] = ()
    tail: TailFunction = field(default=norm_then_pooler())
    check: Callable[[Any], str | None] | None = None
    penalised: str = ""
    fixed_image_size: bool = False

    def layout_for(self, config: Any) -> Layout:
        """The block layout for this configuration."""
        return self.layout(config) if callable(self.layout) else self.layout

    def tail_modules(self, backbone: nn.Module) -> tuple[str, ...]:
        """The `tail_names` present in this backbone (a pooler or projection may be absent)."""
        return tuple(name for name in self.tail_names if isinstance(_optional(backbone, name), nn.Module))


__all__ = [
    "ArchitectureSpec",
    "Layout",
    "PostNorm",
    "StreamPoints",
    "TailFunction",
    "norm_then_first_token",
    "norm_then_pooler",
]
