"""What the library needs to know about a model family to cut it into modules."""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import transformers
from torch import nn
from transformers import AutoModelForImageClassification, PreTrainedConfig, PreTrainedModel

from ..losses import DifferenceEnergy, branch_energy
from ..peft_support import merged_state_dict
from .spec import ArchitectureSpec

logger = logging.getLogger(__name__)

StageWeights = tuple[dict[str, torch.Tensor], list[tuple[str, nn.Module]]]
"""What an exported stage is made of: its state dict (every key of the stage model, persistent buffers included) and
where its other tensors come from: `(path, module)` pairs, the stage's submodule at `path` (`""`: the root) being
a copy of `module` (the trained backbone, a head), whose non-persistent buffers it takes."""


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(_detach(v) for v in value)
    return value


@dataclass
class BlockState:
    """What flows from block to block: the hidden state, and the exact arguments each block is called with.

    Args:
        hidden (`torch.Tensor`): the residual stream (feature map or token states).
        calls (`list[tuple[tuple, dict]]`): per block, the positional arguments after the hidden state and the
            keyword arguments the base model passes it (masks, rotary embeddings, ...); empty for blocks that take
            only the hidden state.
        token_mask (`torch.Tensor`, *optional*): the padding mask `(batch, length)` of text inputs (nonzero = a real
            token): the transport term averages over the real tokens only (padding never changes the objective).
    """

    hidden: torch.Tensor
    calls: list[tuple[tuple, dict[str, Any]]] = field(default_factory=list)
    token_mask: torch.Tensor | None = None

    def detach(self) -> BlockState:
        """The same state cut from the autograd graph, context included (a later module must not train the stem
        through a shared context tensor, e.g. DeBERTa's relative position embeddings)."""
        calls = [(_detach(args), {k: _detach(v) for k, v in kwargs.items()}) for args, kwargs in self.calls]
        return replace(self, hidden=self.hidden.detach(), calls=calls)

    def with_hidden(self, hidden: torch.Tensor) -> BlockState:
        """The same state with another hidden state."""
        return replace(self, hidden=hidden)

    def call(self, index: int) -> tuple[tuple, dict[str, Any]]:
        """Positional (after the hidden state) and keyword arguments of block `index`."""
        return self.calls[index] if self.calls else ((), {})


def floating_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of `module`'s first floating-point parameter (`torch.float32` when it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build modules in `dtype` (a floating dtype): a stage of a bfloat16 model is created in bfloat16, never in
    float32 first (which would take twice the memory)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def buffers_restored(modules: list[nn.Module]) -> Iterator[None]:
    """Put the buffers of `modules` (e.g. BatchNorm running statistics) back as they were on exit."""
    saved = [(buffer, buffer.detach().clone()) for module in modules for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def truncate_depths(depths: list[int], num_blocks: int) -> list[int]:
    """Blocks per stage of a model truncated to its first `num_blocks` blocks, e.g. `([3, 3, 3], 4) -> [3, 1]`."""
    truncated, remaining = [], num_blocks
    for depth in depths:
        if remaining == 0:
            break
        truncated.append(min(depth, remaining))
        remaining -= truncated[-1]
    return truncated


def reset_backbone_outputs(config: PreTrainedConfig, num_stages: int) -> None:
    """Give a truncated configuration that doubles as a backbone configuration (`stage_names`, `out_features`)
    stage names for its `num_stages` stages and the default output (the last stage)."""
    if getattr(config, "stage_names", None) is None:
        return
    config.stage_names = ["stem"] + [f"stage{i}" for i in range(1, num_stages + 1)]
    with contextlib.suppress(AttributeError, ValueError, TypeError):
        config.set_output_features_output_indices(out_features=None, out_indices=None)
    for name in ("out_features", "out_indices", "_out_features", "_out_indices"):
        if hasattr(config, name):
            with contextlib.suppress(AttributeError, ValueError, TypeError):
                setattr(config, name, None)


def task_model_from_config(config: PreTrainedConfig) -> PreTrainedModel:
    """Build an untrained task model (e.g. `BertForSequenceClassification`) from its configuration.

    The class is the first of `config.architectures` known to transformers or registered with an Auto class, else the
    image-classification class of the model type.
    """
    for name in getattr(config, "architectures", None) or []:
        model_class = getattr(transformers, name, None)
        if model_class is None:
            from transformers.models.auto import modeling_auto

            for mapping_name in dir(modeling_auto):
                mapping = getattr(modeling_auto, mapping_name)
                if mapping_name.startswith("MODEL_") and hasattr(mapping, "_extra_content"):
                    model_class = next((c for c in mapping._extra_content.values() if c.__name__ == name), None)
                    if model_class is not None:
                        break
        if model_class is not None:
            return model_class(config)
    return AutoModelForImageClassification.from_config(config)


def _on_meta(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_meta


def _stage_tensor(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`value` as the stage holds it: a CPU tensor of `like`'s dtype; `value` itself (no copy) when it is one."""
    if value.device.type == "cpu" and value.dtype == like.dtype:
        return value
    return value.detach().to(device="cpu", dtype=like.dtype)


def _source_tensor(sources: list[tuple[str, nn.Module]], path: str, name: str) -> torch.Tensor | None:
    """The tensor `name` (a buffer or a tensor attribute) of the module at `path` of the stage in the first source
    that has one."""
    for prefix, source in sources:
        if prefix and path != prefix and not path.startswith(prefix + "."):
            continue
        relative = path[len(prefix) :].lstrip(".") if prefix else path
        try:
            module = source.get_submodule(relative)
        except AttributeError:
            continue
        value = module._buffers.get(name, vars(module).get(name))
        if isinstance(value, torch.Tensor) and not value.is_meta:
            return value
    return None


def meta_tensor_name(model: nn.Module) -> str | None:
    """The name of a parameter, buffer or tensor attribute of `model` still on the meta device, or `None`."""
    for path, module in model.named_modules(remove_duplicate=False):
        tensors = {**module._parameters, **module._buffers, **vars(module)}
        for name, value in tensors.items():
            if _on_meta(value):
                return f"{path}.{name}" if path else name
    return None


def assign_stage_tensors(
    model: nn.Module, state: dict[str, torch.Tensor], sources: list[tuple[str, nn.Module]]
) -> None:
    """Give `model`, built on the meta device, the tensors of `state` themselves (`load_state_dict(assign=True)`: no
    copy where one is a CPU tensor of the model's dtype), then every other tensor still on meta (non-persistent
    buffers such as rotary `inv_freq`, tensor attributes) the value of the same tensor in `sources` (copied: they
    are small). Tensors found nowhere stay on meta (see [`meta_tensor_name`])."""
    targets = model.state_dict()
    state = {key: _stage_tensor(value, targets[key]) if key in targets else value for key, value in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if isinstance(model, PreTrainedModel):
        model.tie_weights()  # assignment gave tied parameters (a tied LM head) one object each: tie them again
    for path, module in model.named_modules():
        for name, value in list(module._buffers.items()) + list(vars(module).items()):
            if not _on_meta(value):
                continue
            found = _source_tensor(sources, path, name)
            if found is None or found.shape != value.shape:
                continue
            copied = found.detach().to(device="cpu", dtype=value.dtype, copy=True)
            if name in module._buffers:
                module._buffers[name] = copied
            else:
                setattr(module, name, copied)


@dataclass
class BlockProbe:
    """Shape and training-memory facts about one residual block, measured by a probe forward pass.

    Args:
        channels (`int`): channels (or hidden size) of the block output.
        spatial_size (`tuple[int, ...]`): trailing dimensions of the block output (height, width for images).
        activation_bytes (`int`): bytes of tensors autograd saves for the block's backward, for one probe batch.
    """

    channels: int
    spatial_size: tuple[int, ...]
    activation_bytes: int


class ModelCutter(ABC):
    """Cuts one family of models into a stem, an ordered list of residual blocks and a head.

    A cutter wraps the *backbone* of a task model (e.g. `ResNetModel` inside `ResNetForImageClassification`)
    and exposes the operations module-wise training needs: run the stem, run one block while measuring the kinetic
    energy of its residual branches, and export a prefix of the blocks with a head as a standalone model.
    """

    family: ClassVar[str]
    head_kinds: ClassVar[tuple[str, ...]]
    default_head: ClassVar[str]
    context_input_names: ClassVar[tuple[str, ...]] = ()
    task: str = "classification"
    main_input_name: str = "pixel_values"

    def __init__(self, backbone: nn.Module, head_template: nn.Module | None, spec: ArchitectureSpec):
        self.spec = spec
        self.backbone = backbone
        self.head_template = head_template
        self.blocks: list[nn.Module] = self.find_blocks(backbone)

    @property
    def dtype(self) -> torch.dtype:
        """The backbone's floating dtype: heads and exported stages are built in it."""
        return floating_dtype(self.backbone)

    def energy(
        self, residual: torch.Tensor, differentiable: bool, needs_copy: bool = False, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """mean(r ** 2) of a residual branch: differentiable when the transport term is trained, else a detached
        value for logging that keeps nothing alive (VanGL pays no memory for it).

        Args:
            residual (`torch.Tensor`): the branch output.
            needs_copy (`bool`): the tensor is modified in place later (copy it before autograd saves it).
            mask (`torch.Tensor`, *optional*): the padding mask `(batch, length)`: the mean runs over real tokens.
        """
        if not differentiable or not torch.is_grad_enabled():
            with torch.no_grad():
                return branch_energy(residual, mask)
        return branch_energy(residual.clone() if needs_copy else residual, mask)

    def difference_energy(
        self, after: torch.Tensor, before: torch.Tensor, differentiable: bool, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """mean((after - before) ** 2) of a branch given by the residual stream around it, like `energy` (detached
        when the transport term is not trained; over the real tokens of `mask`); the difference is recomputed in
        backward rather than kept."""
        if not differentiable or not torch.is_grad_enabled():
            with torch.no_grad():
                return branch_energy(after - before, mask)
        return DifferenceEnergy.apply(after, before, mask)

    @abstractmethod
    def find_blocks(self, backbone: nn.Module) -> list[nn.Module]:
        """The residual blocks of `backbone` in execution order, where the registry entry says they are."""

    @classmethod
    @abstractmethod
    def split_task_model(cls, model: nn.Module, spec: ArchitectureSpec) -> tuple[nn.Module, nn.Module | None]:
        """Return the backbone of a task model and a template of its head."""

    @abstractmethod
    def embed(self, **inputs: Any) -> BlockState:
        """Run the stem (not penalised) and return the input of the first block."""

    def state_from_cache(self, hidden: torch.Tensor, **inputs: Any) -> BlockState:
        """Rebuild a block state from a cached hidden state and the `context_input_names` inputs."""
        return BlockState(hidden)

    @abstractmethod
    def run_block(self, index: int, state: BlockState, energy: bool = False) -> tuple[BlockState, list[torch.Tensor]]:
        """Run block `index` and return its output and the kinetic energy mean(r ** 2) of each residual branch.

        Args:
            index (`int`): the block.
            state ([`BlockState`]): its input.
            energy (`bool`): the energies are trained (differentiable); otherwise they are detached values for
                logging that keep nothing alive.
        """

    def run_block_checkpointed(
        self, index: int, state: BlockState, energy: bool, checkpoint: Callable[..., Any]
    ) -> tuple[BlockState, list[torch.Tensor]]:
        """`run_block` under activation checkpointing: the block (its branch energies included) keeps only its input
        and runs again in backward, with the same random state (dropout masks); buffers it updates (BatchNorm
        statistics) are updated once, by the first run, not again by the recomputation.

        Args:
            checkpoint (`Callable`): `torch.utils.checkpoint.checkpoint` with its options (non-reentrant).
        """
        modules = [self.blocks[index], *self.block_extras(index)]
        runs = [0]

        def run(hidden: torch.Tensor) -> tuple[BlockState, list[torch.Tensor]]:
            runs[0] += 1
            with buffers_restored(modules) if runs[0] > 1 else contextlib.nullcontext():
                return self.run_block(index, state.with_hidden(hidden), energy)

        return checkpoint(run, state.hidden)  # the hidden state as an argument: its device's RNG state is kept

    @abstractmethod
    def build_head(
        self, kind: str, probe: BlockProbe, num_labels: int, pool_size: int, is_last: bool, num_blocks: int
    ) -> nn.Module:
        """Build an auxiliary head reading the output of block `num_blocks - 1`, described by `probe` (`is_last`:
        the classifier)."""

    def unused_backbone_modules(self) -> list[nn.Module]:
        """Backbone modules that never run in a cut model (their role is played by each module's head copy)."""
        return []

    def block_extras(self, index: int) -> list[nn.Module]:
        """Modules outside block `index` that run (and train) with it, e.g. Swin's patch merging before a stage."""
        return []

    def head_logits(self, head: nn.Module, state: BlockState, inputs: dict[str, Any]) -> torch.Tensor:
        """Apply a head to a block state (`inputs`: the model inputs, for heads whose pooling reads them)."""
        return head(state.hidden)

    @abstractmethod
    def export_stage(
        self, num_blocks: int, head: nn.Module, num_labels: int, share_weights: bool = False
    ) -> PreTrainedModel:
        """A standalone model made of the stem, the first `num_blocks` blocks and `head`, with identical outputs.

        Args:
            share_weights (`bool`): the stage holds the trained tensors themselves (see [`~ModelCutter.build_stage`])
                instead of a copy.
        """

    def load_truncated_backbone(self, target: nn.Module) -> None:
        """Load every weight of `target`, a shallower copy of the backbone, from the trained backbone (LoRA merged)."""
        target.load_state_dict(self.truncated_backbone_state(target), strict=True)

    def truncated_backbone_state(self, target: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
        """The trained backbone's tensors (LoRA merged) for every key of `target`, a shallower copy of the backbone,
        under `prefix` (e.g. `"backbone."`). Tensors of the backbone itself, not copies (except a LoRA merge)."""
        source = merged_state_dict(self.backbone)
        return {prefix + name: source[name] for name in target.state_dict()}

    def build_stage(
        self,
        build: Callable[[], nn.Module],
        weights: Callable[[nn.Module], StageWeights],
        share_weights: bool = False,
    ) -> PreTrainedModel:
        """Build a stage model in the stage dtype, on CPU, in eval mode, and give it its weights.

        Args:
            build (`Callable`): makes the untrained stage model.
            weights (`Callable`): the stage model's tensors ([`StageWeights`]) for a model `build` made.
            share_weights (`bool`): build the model on the meta device (no memory, no random initialisation) and
                assign it the tensors of `weights` themselves (a CPU model's tensors: the stage shares their storage)
                with `requires_grad=False`. Where a tensor is left on meta (a family that keeps a tensor this does not
                find) or the model cannot be built on meta, the stage is built by copying, as with `False`.
                `False`: a new model whose weights are copies.
        """
        architecture = getattr(self.spec, "name", type(self.backbone).__name__)
        if share_weights:
            model = None
            try:
                with default_dtype(self.dtype), torch.device("meta"):
                    model = build()
            except Exception as error:  # noqa: BLE001 - any failure falls back to the copying export below
                logger.warning("%s cannot be built on the meta device (%s): its stage is exported by copying.",
                               architecture, error)  # fmt: skip
            if model is not None:
                state, sources = weights(model)
                assign_stage_tensors(model, state, sources)
                left = meta_tensor_name(model)
                if left is None:
                    model.requires_grad_(False)
                    return model.eval()
                logger.warning("The %s stage has no value for `%s` (left on the meta device): it is exported by "
                               "copying.", architecture, left)  # fmt: skip
        with default_dtype(self.dtype):
            model = build()
        state, _ = weights(model)
        model.load_state_dict(state, strict=True)
        return model.eval()

    @abstractmethod
    def probe_inputs(self, image_size: int | None, batch_size: int = 2) -> dict[str, torch.Tensor]:
        """Example inputs for probing block shapes."""

    def probe_blocks(self, inputs: dict[str, torch.Tensor]) -> list[BlockProbe]:
        """Run one training-mode forward pass and measure every block's output shape and saved activations.

        Args:
            inputs (`dict[str, torch.Tensor]`): example inputs (see `probe_inputs`).

        Returns:
            `list[BlockProbe]`: one entry per block; the stem's saved activations are counted in block 0.
        """
        saved_bytes = [0]

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            saved_bytes[0] += tensor.numel() * tensor.element_size()
            return tensor

        probes = []
        was_training = self.backbone.training
        self.backbone.train()
        states = {name: buffer.clone() for name, buffer in self.backbone.named_buffers()}
        try:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                state = self.embed(**inputs)
                for index in range(len(self.blocks)):
                    state, _ = self.run_block(index, state, energy=True)
                    hidden = state.hidden
                    probes.append(
                        BlockProbe(
                            channels=int(hidden.shape[1]) if hidden.dim() == 4 else int(hidden.shape[-1]),
                            spatial_size=tuple(int(s) for s in hidden.shape[2:]) if hidden.dim() == 4 else (),
                            activation_bytes=saved_bytes[0],
                        )
                    )
                    saved_bytes[0] = 0
        finally:
            with torch.no_grad():
                for name, buffer in self.backbone.named_buffers():
                    buffer.copy_(states[name])
            self.backbone.train(was_training)
        return probes
