"""Decoder heads that share one vocabulary projection (`aux_head="tied"`).

A native decoder head (see [`NativeHead`]) holds an untied copy of the final norm *and* of the vocab x hidden LM head,
so a K-module model holds K extra vocabulary matrices. A [`TiedLMHead`] is the same native head (the task model's
own `forward`: logit soft-capping, `logits_to_keep`, OPT's `project_out`, ...) whose LM head is a
[`SharedProjection`]: it has no weights of its own and projects with the model's one shared vocabulary matrix, given
for each call. Every module keeps its own copy of the final norm (small, trainable).

Who trains the shared projection: **module 1, alone.** It is the input embedding of a base with tied embeddings
(GPT-2, Gemma, Llama with `tie_word_embeddings=True`: the LM head *is* module 1's embedding), or module 1's own
(untied) LM head otherwise. Heads 2..K read it as a constant (`detach`): a module never updates another module's
parameters, and since stage k always contains module 1, exporting modules 1..k with head k (norm k + the shared
projection) gives head k's logits in every mode, also after later phases ran (later phases never change module 1).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .native_head import NativeHead


def _is_dtensor(value: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(value, DTensor)


class SharedProjection(nn.Module):
    """Stands in for the LM head of a [`TiedLMHead`]: `F.linear` with the shared projection bound for the call.

    It holds no parameters (the shared matrix belongs to module 1); `TiedLMHead.projecting_with` binds it.
    """

    def __init__(self) -> None:
        super().__init__()
        object.__setattr__(self, "_bound", None)  # (module, trainable) while a call runs; never a submodule

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        bound = self._bound
        if bound is None:
            raise RuntimeError(
                "A tied LM head (`aux_head='tied'`) was called without its shared projection: run it through its "
                "TRGLModel (`iter_modules`, `forward`, `export_stage`), which binds the projection."
            )
        source, trainable = bound
        weight, bias = source.weight, getattr(source, "bias", None)
        if _is_dtensor(weight):
            raise ValueError(
                "`aux_head='tied'` reads module 1's vocabulary matrix from every module's head, which FSDP shards "
                "per module: train with `aux_head='native'` under FSDP, or without FSDP (DDP)."
            )
        if not trainable:  # a later module reads module 1's matrix as a constant: never trains it
            weight = weight.detach()
            bias = bias.detach() if bias is not None else None
        return F.linear(hidden, weight, bias)


class TiedLMHead(NativeHead):
    """A native decoder head whose LM head is a [`SharedProjection`]: the module's own final norm (trainable) and
    the model's shared vocabulary projection (module 1's; see the module docstring).

    Build one with [`TiedLMHead.from_native`]; its `state_dict` holds the norm only.
    """

    output_name: str

    @classmethod
    def from_native(cls, template: NativeHead, output_name: str) -> TiedLMHead:
        """A copy of `template` (a native decoder head) whose LM head `output_name` is a [`SharedProjection`]; the
        template's vocabulary matrix is not copied.

        Args:
            template ([`NativeHead`]): the task model's head (final norm + LM head).
            output_name (`str`): the name of the LM head in the task model (`"lm_head"`, GPT-NeoX's `"embed_out"`).
        """
        output = getattr(template, output_name)
        head = copy.deepcopy(template, memo={id(output): SharedProjection()})
        head.__class__ = cls
        head.output_name = output_name
        return head

    @property
    def projection(self) -> SharedProjection:
        """The LM head stand-in."""
        return getattr(self, self.output_name)

    @contextlib.contextmanager
    def projecting_with(self, source: nn.Module, trainable: bool) -> Iterator[TiedLMHead]:
        """Bind the shared projection for the calls inside the block.

        Args:
            source (`nn.Module`): the module whose `weight` (and `bias`, if any) is the vocabulary projection: the
                input embedding of a tied base, or module 1's LM head.
            trainable (`bool`): whether this head's module owns the projection (module 1): otherwise it is read
                detached.
        """
        previous = self.projection._bound
        object.__setattr__(self.projection, "_bound", (source, trainable))
        try:
            yield self
        finally:
            object.__setattr__(self.projection, "_bound", previous)

    def export_state(self) -> dict[str, torch.Tensor]:
        """The head's weights under the task model's names, the bound projection's included (`lm_head.weight`): what
        a native stage loads. Call inside `projecting_with`."""
        bound = self.projection._bound
        if bound is None:
            raise RuntimeError(
                "`TiedLMHead.export_state` needs the shared projection: call it inside `projecting_with`."
            )
        source = bound[0]
        state = dict(self.state_dict())
        state[f"{self.output_name}.weight"] = source.weight.detach()
        if getattr(source, "bias", None) is not None:
            state[f"{self.output_name}.bias"] = source.bias.detach()
        return state


__all__ = ["SharedProjection", "TiedLMHead"]
