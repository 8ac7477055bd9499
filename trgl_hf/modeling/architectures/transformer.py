"""Transformers: encoders, decoders and vision transformers whose blocks sit in one `nn.ModuleList`.

Where the blocks are, how each block adds its branches to the residual stream, and what runs after the last block
all come from the model's registry entry ([`ArchitectureSpec`]); nothing is guessed.

- **Exact block inputs.** The base model's own forward computes every block's arguments (attention masks, including
  per-layer sliding-window masks, rotary embeddings, relative positions): `embed` runs it with each block replaced by a
  recorder that keeps its arguments and passes the hidden state through, and stops at the last block.
- **Exact branches.** [`StreamPoints`]: the block updates the stream in sequence (`s1 = x + r1`, `out = s1 + r2`);
  the named submodules read `s1, ...`, so `r_j = s_j - s_(j-1)` is exactly what each branch adds — after any
  post-branch norm, layer scale or drop path. [`PostNorm`] (BERT): `h1 = LN1(x + r1)`, `out = LN2(h1 + r2)`; what is
  penalised is `r1 = (input of LN1) - x` and `r2 = (input of LN2) - h1`, the residual functions added to the stream.
  Both are checked at every call (each named submodule runs once per block on a stream-shaped tensor).
- **Native heads.** Each module's head is a [`NativeHead`]: the task model's own head run by its own `forward`.
- **Tied decoder heads** (`aux_head="tied"`, causal LMs): each module's head is its own copy of the final norm and
  one vocabulary projection shared by every head and trained by module 1 alone (see [`TiedLMHead`]); stages export as
  the native `*ForCausalLM` (tied like the base when its embeddings are).
- **Mean-pooling heads** (`aux_head="mean"`, text sequence classifiers whose last hidden state is the last block's
  output): a [`MeanPoolHead`] per module; stages export as `TRGLStageForSequenceClassification` (remote code).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from ...models.aux_heads import MeanPoolHead
from ...models.configuration_trgl_stage import TRGLStageConfig
from ...models.modeling_trgl_stage import TRGLStageForSequenceClassification
from ..peft_support import merged_state_dict
from .base import (
    BlockProbe,
    BlockState,
    ModelCutter,
    StageWeights,
    reset_backbone_outputs,
    task_model_from_config,
)
from .native_head import NativeHead
from .spec import ArchitectureSpec, PostNorm, StreamPoints
from .tied_head import TiedLMHead

BLOCK_RETURNS: dict[type, int] = {}
"""Per block class: 0 when a block returns a tensor, n when it returns a tuple of n (learned on first use)."""
CACHE_ARGUMENTS = ("past_key_values", "past_key_value", "cache")


def padding_mask(inputs: dict[str, Any]) -> torch.Tensor | None:
    """The 2-d `attention_mask` of text inputs (`(batch, length)`, 0 = padding), which the transport term reads."""
    mask = inputs.get("attention_mask")
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


class _StopForward(Exception):
    """Raised by the last block's recorder to stop the base model's forward."""


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    value = kwargs.get("hidden_states")
    return value if isinstance(value, torch.Tensor) else None


def _as_stream(point: torch.Tensor | None, stream: torch.Tensor) -> torch.Tensor | None:
    """A recorded tensor in the stream's shape (OPT flattens the stream to `(batch * length, hidden)` mid-block)."""
    if point is not None and point.shape != stream.shape and point.numel() == stream.numel():
        return point.reshape(stream.shape)
    return point


class _Recorder(nn.Module):
    """Stands in for a block while the base model's forward computes the blocks' arguments."""

    def __init__(self, record: Any, block: nn.Module):
        super().__init__()
        self.record = record
        self._block = [block]  # not a submodule

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.record(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # the base model may read block attributes (ModernBERT: attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"][0], name)


class TransformerCutter(ModelCutter):
    """Cutter for models whose residual blocks are one `nn.ModuleList` (see the module docstring)."""

    family = "transformer"
    head_kinds = ("native", "mean", "tied")
    default_head = "native"
    context_input_names = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values")

    def __init__(self, backbone: nn.Module, head_template: nn.Module | None, spec: ArchitectureSpec):
        super().__init__(backbone, head_template, spec)
        self.layout = spec.layout_for(backbone.config)
        self.main_input_name = getattr(backbone, "main_input_name", "input_ids")
        self.architecture = getattr(head_template, "architecture", None)
        self.output_name = getattr(head_template, "output_name", None)
        self.ties_embeddings = bool(getattr(head_template, "ties_embeddings", False))

    def find_blocks(self, backbone: nn.Module) -> list[nn.Module]:
        return list(backbone.get_submodule(self.spec.blocks))

    @classmethod
    def split_task_model(cls, model: nn.Module, spec: ArchitectureSpec) -> tuple[nn.Module, nn.Module | None]:
        return model.base_model, NativeHead(model, spec.tail_modules(model.base_model), spec.tail)

    def unused_backbone_modules(self) -> list[nn.Module]:
        return [self.backbone.get_submodule(name) for name in self.spec.tail_modules(self.backbone)]

    # ------------------------------------------------------------------ forward

    def embed(self, **inputs: Any) -> BlockState:
        inputs = {k: v for k, v in inputs.items() if v is not None}
        if self.main_input_name not in inputs:
            raise ValueError(f"This model needs `{self.main_input_name}` in its inputs.")
        calls: list[tuple[tuple, dict] | None] = [None] * len(self.blocks)
        first_hidden: list[torch.Tensor] = []
        last = len(self.blocks) - 1

        def recorder(index: int, original: Any):
            def record(*args: Any, **kwargs: Any) -> Any:
                hidden = _first_tensor(args, kwargs)
                if hidden is None:
                    raise ValueError(f"Block {index} of {self.spec.name} was called without a hidden state.")
                if index == 0:
                    first_hidden.append(hidden)
                rest = args[1:] if args and args[0] is hidden else args
                context = {k: v for k, v in kwargs.items() if v is not hidden and k not in CACHE_ARGUMENTS}
                if "use_cache" in context:
                    context["use_cache"] = False
                calls[index] = (tuple(rest), context)
                if index == last:
                    raise _StopForward
                block_class = type(self.blocks[index])
                if block_class not in BLOCK_RETURNS:  # learn once what a block returns, to pass the stream through
                    with torch.no_grad():
                        output = original(*args, **kwargs)
                    BLOCK_RETURNS[block_class] = len(output) if isinstance(output, tuple) else 0
                length = BLOCK_RETURNS[block_class]
                return (hidden,) + (None,) * (length - 1) if length else hidden

            return record

        slots = self._block_slots()
        for index, (parent, key) in enumerate(slots):  # the block itself is called, so its hooks (FSDP) run
            parent._modules[key] = _Recorder(recorder(index, self.blocks[index]), self.blocks[index])
        try:
            self.backbone(**inputs, use_cache=False)
        except _StopForward:
            pass
        finally:
            for block, (parent, key) in zip(self.blocks, slots):
                parent._modules[key] = block
        if any(call is None for call in calls):
            raise ValueError(f"The forward of {self.spec.name} did not call every block once: it cannot be cut.")
        return BlockState(first_hidden[0], calls, token_mask=padding_mask(inputs))

    def _block_slots(self) -> list[tuple[nn.Module, str]]:
        """Where each block sits in the backbone (parent module, key), to swap it for a recorder."""
        where = {id(child): (parent, key) for parent in self.backbone.modules()
                 for key, child in parent._modules.items() if child is not None}  # fmt: skip
        return [where[id(block)] for block in self.blocks]

    def state_from_cache(self, hidden: torch.Tensor, **inputs: Any) -> BlockState:
        return self.embed(**inputs).with_hidden(hidden)

    def run_block(self, index: int, state: BlockState, energy: bool = False) -> tuple[BlockState, list[torch.Tensor]]:
        block = self.blocks[index]
        args, kwargs = state.call(index)
        records: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []
        handles = []

        def after_norm(name: str):  # post-LN: the norm's input (stream + branch) and output (the new stream)
            return lambda module, args, output: records.append((name, args[0], output))

        def before_point(name: str):  # stream points: the stream the submodule reads
            return lambda module, args, kwargs: records.append((name, _first_tensor(args, kwargs), None))

        for name in self.layout.names:
            module = block.get_submodule(name)
            if isinstance(self.layout, PostNorm):
                handles.append(module.register_forward_hook(after_norm(name)))
            else:
                handles.append(module.register_forward_pre_hook(before_point(name), with_kwargs=True))
        try:
            output = block(state.hidden, *args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        if isinstance(output, tuple):
            output = output[0]
        records = [(name, _as_stream(point, output), after) for name, point, after in records]
        self._check_records(index, records, output)
        if isinstance(self.layout, PostNorm):
            energies, stream = [], state.hidden
            for _, norm_input, norm_output in records:
                energies.append(self.difference_energy(norm_input, stream, energy, state.token_mask))
                stream = norm_output
            return state.with_hidden(output), energies
        stream = [state.hidden] + [point for _, point, _ in records] + [output]
        pairs = zip(stream, stream[1:])
        mask = state.token_mask
        return state.with_hidden(output), [
            self.difference_energy(after, before, energy, mask) for before, after in pairs
        ]

    def _check_records(self, index: int, records: list, output: torch.Tensor) -> None:
        names = tuple(name for name, _, _ in records)
        shapes_ok = all(point is not None and point.shape == output.shape for _, point, _ in records)
        closes = not isinstance(self.layout, PostNorm) or (records and records[-1][2] is output)
        if names != self.layout.names or not shapes_ok or not closes:
            raise ValueError(
                f"Block {index} of {self.spec.name} does not have the registered residual layout "
                f"({self.layout.describe()}; saw calls {names}): its transport term cannot be computed exactly. "
                "Was the model modified after loading? Otherwise please report it with the model's config."
            )

    def head_logits(self, head: nn.Module, state: BlockState, inputs: dict[str, Any]) -> torch.Tensor:
        return head(state.hidden, **inputs)

    def build_head(
        self, kind: str, probe: BlockProbe, num_labels: int, pool_size: int, is_last: bool, num_blocks: int
    ) -> nn.Module:
        if self.head_template is None:
            raise ValueError("The model was built without its head: cut it with `TRGLModel.from_base(task_model)`.")
        if kind == "mean":
            problem = self.mean_head_problem()
            if problem is not None:
                raise ValueError(problem)
            config = self.backbone.config
            dropout = getattr(config, "classifier_dropout", None)
            dropout = dropout if dropout is not None else getattr(config, "hidden_dropout_prob", 0.1)
            eps = getattr(config, "layer_norm_eps", 1e-12)
            parameter = next(self.backbone.parameters())  # like a copied native head: the backbone's device, dtype
            head = MeanPoolHead(probe.channels, num_labels, dropout, eps)
            return head.to(device=parameter.device, dtype=parameter.dtype)
        if kind == "tied":
            problem = self.tied_head_problem()
            if problem is not None:
                raise ValueError(problem)
            if num_blocks == self.first_module_blocks and not self.ties_embeddings:
                return copy.deepcopy(self.head_template)  # module 1 owns the shared (untied) LM head
            return TiedLMHead.from_native(self.head_template, self.output_name)
        return copy.deepcopy(self.head_template)

    first_module_blocks: int | None = None
    """Blocks of module 1 (set by `TRGLModel` before it builds the heads): with `aux_head="tied"` on a base with an
    untied LM head, module 1's head holds the shared projection."""

    def tied_head_problem(self) -> str | None:
        """Why `aux_head="tied"` cannot be exact here, or `None`: it needs a causal language model whose LM head is a
        plain linear layer (a tied base's embedding or an untied `lm_head`)."""
        architecture = self.architecture or "this model"
        if self.output_name is None or not architecture.endswith(("ForCausalLM", "LMHeadModel")):
            return (
                f"`aux_head='tied'` shares a language model's vocabulary projection between the heads; {architecture} "
                "is not a causal language model with a linear LM head: use `aux_head='native'`."
            )
        return None

    def shared_projection(self, heads: nn.ModuleList) -> nn.Module:
        """The module whose weight every tied head projects with: the input embedding of a base with tied embeddings,
        else module 1's LM head (in `heads[0]`)."""
        if self.ties_embeddings:
            return self.backbone.get_input_embeddings()
        return getattr(heads[0], self.output_name)

    def mean_head_problem(self) -> str | None:
        """Why `aux_head="mean"` cannot be exact here, or `None`: it needs a text sequence classifier whose last
        hidden state is the last block's output (no final norm), so that the exported stage (the truncated backbone
        + the head) gives the same logits."""
        architecture = self.architecture or ""
        if self.main_input_name != "input_ids" or not architecture.endswith("ForSequenceClassification"):
            return (
                f"`aux_head='mean'` is for text sequence classifiers; {architecture or 'this model'} is not one: "
                "use `aux_head='native'`."
            )
        stand_in = getattr(self.head_template, self.head_template.prefix, None) if self.head_template else None
        parameter = next(self.backbone.parameters())  # the tail runs where the model is (GPU, meta, bf16)
        probe = torch.zeros(1, 1, self.backbone.config.hidden_size, device=parameter.device, dtype=parameter.dtype)
        if stand_in is None or self.spec.tail(stand_in, probe)["last_hidden_state"] is not probe:
            return (
                f"`aux_head='mean'` reads the last block's output, but {architecture} transforms it after the last "
                f"block ({', '.join(self.spec.tail_modules(self.backbone))}): use `aux_head='native'`."
            )
        return None

    def probe_inputs(self, image_size: int | None, batch_size: int = 2) -> dict[str, torch.Tensor]:
        config = self.backbone.config
        parameter = next(self.backbone.parameters())
        if self.main_input_name == "pixel_values":
            size = image_size or getattr(config, "image_size", 224)
            size = size if isinstance(size, int) else size[0]
            channels = getattr(config, "num_channels", 3)
            return {"pixel_values": torch.randn(batch_size, channels, size, size, device=parameter.device)}
        length = min(8, getattr(config, "max_position_embeddings", 8) or 8)
        input_ids = torch.randint(0, config.vocab_size, (batch_size, length), device=parameter.device)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}

    # ------------------------------------------------------------------ export

    def stage_config(self, num_blocks: int) -> Any:
        """The task model's configuration truncated to its first `num_blocks` blocks."""
        config = copy.deepcopy(self.backbone.config)
        config.architectures = [self.architecture]
        config.num_hidden_layers = num_blocks
        if isinstance(getattr(config, "layer_types", None), (list, tuple)):
            config.layer_types = list(config.layer_types)[:num_blocks]
        reset_backbone_outputs(config, num_blocks)
        if hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
        return config

    def _stage_config_for(self, num_blocks: int, head: nn.Module) -> Any:
        """`stage_config`, tied like the base when a tied head exports the base's own embedding as its LM head."""
        config = self.stage_config(num_blocks)
        if isinstance(head, TiedLMHead) and self.ties_embeddings:
            config.tie_word_embeddings = True
        return config

    def export_stage(
        self, num_blocks: int, head: nn.Module, num_labels: int, share_weights: bool = False
    ) -> PreTrainedModel:
        if isinstance(head, MeanPoolHead):
            return self._export_mean_stage(num_blocks, head, num_labels, share_weights)
        config = self._stage_config_for(num_blocks, head)

        def weights(model: nn.Module) -> StageWeights:
            prefix = model.base_model_prefix
            source = merged_state_dict(self.backbone)
            head_state = head.export_state() if isinstance(head, TiedLMHead) else merged_state_dict(head)
            state = {}
            for key in model.state_dict():
                if key in head_state:
                    state[key] = head_state[key]
                elif key.startswith(prefix + ".") and key[len(prefix) + 1 :] in source:
                    state[key] = source[key[len(prefix) + 1 :]]
                else:
                    raise ValueError(f"Cannot export {self.architecture}: no weights for {key}.")
            return state, [("", head), (prefix, self.backbone)]

        return self.build_stage(lambda: task_model_from_config(config), weights, share_weights)

    def _export_mean_stage(
        self, num_blocks: int, head: MeanPoolHead, num_labels: int, share_weights: bool = False
    ) -> PreTrainedModel:
        backbone_config = self.stage_config(num_blocks)
        backbone_config.architectures = None
        takes_pooler_flag = "add_pooling_layer" in inspect.signature(type(self.backbone).__init__).parameters
        stage_config = TRGLStageConfig(
            backbone_config=backbone_config.to_dict(),
            backbone_kwargs={"add_pooling_layer": False} if takes_pooler_flag else None,
            aux_head="mean",
            head_channels=head.classifier.in_features,
            head_dropout=head.dropout.p,
            head_layer_norm_eps=head.norm.eps,
            num_labels=num_labels,
            problem_type=getattr(self.backbone.config, "problem_type", None),
        )

        def weights(model: nn.Module) -> StageWeights:
            state = self.truncated_backbone_state(model.backbone, "backbone.")
            state.update({f"head.{key}": value for key, value in merged_state_dict(head).items()})
            return state, [("backbone", self.backbone), ("head", head)]

        return self.build_stage(lambda: TRGLStageForSequenceClassification(stage_config), weights, share_weights)


__all__ = ["PostNorm", "StreamPoints", "TransformerCutter"]
