"""Auxiliary heads that are the task model's own head, run by the task model's own `forward`.

A [`NativeHead`] holds copies of the task model's head (classifier, score, LM head, DeBERTa's context pooler, ...)
under their own names, and the backbone's tail (final norm, pooler, output projection) under `<prefix>.<name>`, so
its `state_dict` keys are exactly the task model's. Its logits come from the task model class's `forward`, called on
the head with a stand-in for the backbone that returns the tail's output for the given hidden state: the pooling
rule (first token, last non-padding token, mean over the mask, pooler, logit soft-capping, ...) is transformers' own
code, so a stage exported from modules 1..k and head k gives the head's logits exactly.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

TailFunction = Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor | None]]


class BackboneOutput(BaseModelOutputWithPooling):
    """A backbone output whose unset fields (cache, attentions, hidden states, ...) read as `None`."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None


class BackboneTail(nn.Module):
    """Stands in for the backbone inside a [`NativeHead`]: returns the tail's output for the pending hidden state."""

    def __init__(self, modules: dict[str, nn.Module], tail: TailFunction):
        super().__init__()
        for name, module in modules.items():  # dotted names (OPT's `decoder.final_layer_norm`) keep their path
            *parents, leaf = name.split(".")
            owner: nn.Module = self
            for parent in parents:
                if not hasattr(owner, parent):
                    owner.add_module(parent, TailPath(self))
                owner = getattr(owner, parent)
            owner.add_module(leaf, module)
        self.tail = tail
        self.pending: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> BackboneOutput:
        if self.pending is None:
            raise RuntimeError("NativeHead: the backbone stand-in was called without a hidden state.")
        return BackboneOutput(**self.tail(self, self.pending))


class TailPath(nn.Module):
    """A level of a dotted tail path; calling it calls the stand-in (OPT's task forward calls `model.decoder`)."""

    def __init__(self, root: BackboneTail):
        super().__init__()
        self._root = [root]  # not a submodule: no cycle in the module tree

    def forward(self, *args: Any, **kwargs: Any) -> BackboneOutput:
        return self._root[0](*args, **kwargs)


PLAIN_TYPES = (int, float, str, bool, type(None))


def _output_embedding(task_model: PreTrainedModel) -> tuple[str | None, bool]:
    """The name of a language model's LM head among its children (`"lm_head"`, GPT-NeoX's `"embed_out"`) and whether
    its configuration ties it to the input embedding (`tie_word_embeddings` and a tied-weights entry for it, as
    transformers decides; the weights themselves are tied only after loading); `(None, False)` for other models."""
    try:
        output = task_model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None, False
    name = next((name for name, child in task_model.named_children() if child is output), None)
    if name is None or not isinstance(output, nn.Linear):
        return None, False
    config = task_model.config.get_text_config()
    tied_keys = getattr(task_model, "_tied_weights_keys", None) or {}
    return name, bool(getattr(config, "tie_word_embeddings", False)) and f"{name}.weight" in tied_keys


def _untie_shared_parameters(module: nn.Module) -> None:
    """Give each parameter name of `module` a parameter of its own: a masked-LM head ties its decoder's bias to its
    own `bias` (BERT's `cls.predictions`), which a saved TRGL model could not write as two names of one tensor. The
    stages are saved untied (`tie_word_embeddings=False`), so each name keeps its own trained value there too."""
    seen: set[int] = set()
    for name, parameter in list(module.named_parameters(remove_duplicate=False)):
        if id(parameter) in seen:
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            setattr(owner, leaf, nn.Parameter(parameter.detach().clone(), requires_grad=parameter.requires_grad))
        seen.add(id(parameter))


class NativeHead(nn.Module):
    """The task model's head at one module, applied by the task model's own `forward`.

    Args:
        task_model (`PreTrainedModel`): the model whose head is copied (the base, or a truncated one of the same
            class whose head has the module's width).
        tail_names (`tuple[str, ...]`): backbone submodules that run after the last block (copied into the head).
        tail (`Callable`): computes `{"last_hidden_state": ..., "pooler_output": ...}` from the tail modules and the
            last block's output.
    """

    def __init__(self, task_model: PreTrainedModel, tail_names: tuple[str, ...], tail: TailFunction):
        super().__init__()
        backbone = task_model.base_model
        self.prefix = self.base_model_prefix = task_model.base_model_prefix
        self.architecture = type(task_model).__name__
        self.task_forward = type(task_model).forward
        self.config = copy.deepcopy(task_model.config)
        for name, value in vars(task_model).items():
            if not name.startswith("_") and name not in ("training", "config") and isinstance(value, PLAIN_TYPES):
                setattr(self, name, value)
        for name, child in task_model.named_children():
            if child is not backbone:
                self.add_module(name, copy.deepcopy(child))
        _untie_shared_parameters(self)
        self.output_name, self.ties_embeddings = _output_embedding(task_model)
        tail_modules = {name: copy.deepcopy(backbone.get_submodule(name)) for name in tail_names}
        self.add_module(self.prefix, BackboneTail(tail_modules, tail))
        parameters = inspect.signature(self.task_forward).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        self.accepted_inputs = None if takes_any else set(parameters)

    def forward(self, hidden: torch.Tensor, **inputs: Any) -> torch.Tensor:
        """Logits of the task model for `hidden`, the output of the module's last block.

        Args:
            hidden (`torch.Tensor`): the residual stream after the module's last block.
            inputs: the model inputs (`input_ids`, `attention_mask`, ...); the head's pooling rule may read them.
        """
        inputs = {k: v for k, v in inputs.items() if v is not None and k != "labels"}
        inputs["return_dict"] = True
        if self.accepted_inputs is not None:
            inputs = {k: v for k, v in inputs.items() if k in self.accepted_inputs}
        stand_in: BackboneTail = getattr(self, self.prefix)
        stand_in.pending = hidden
        try:
            output = self.task_forward(self, **inputs)
        finally:
            stand_in.pending = None
        return output.logits

    def load_matching(self, other: NativeHead) -> None:
        """Copy the weights of `other` (e.g. the pretrained head) where every shape matches; keep ours otherwise."""
        theirs = other.state_dict()
        ours = self.state_dict()
        if set(theirs) == set(ours) and all(theirs[k].shape == ours[k].shape for k in ours):
            self.load_state_dict(theirs)


__all__ = ["BackboneOutput", "BackboneTail", "NativeHead"]
