"""`TRGLModel`: a base network cut into K modules, each with an auxiliary head and its own TRGL loss."""

from __future__ import annotations

import copy
import inspect
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForImageClassification, PreTrainedModel
from transformers.utils import ModelOutput

from .architectures import BlockProbe, architecture_named, architecture_of
from .architectures.base import BlockState, task_model_from_config
from .architectures.tied_head import TiedLMHead
from .configuration_trgl import TRGLConfig
from .hf_internals import auto_class_cleared, mark_initialized
from .losses import chunked_causal_lm_loss, lm_loss_chunk_tokens, trgl_loss
from .peft_support import frozen_parameter_ids, inject_lora, is_peft_model, unwrap_peft_model
from .pretrained_defaults import is_pretrained_base, resolve_aux_head, resolve_tau, resolve_tau_scale
from .processes import mean_over_processes
from .remote_code import REMOTE_CODE_FILES, write_remote_code
from .remote_code import auto_map as remote_auto_map
from .sharded import full_parameters, is_sharded
from .splitting import balanced_split, check_num_modules, check_split, equal_split
from .tasks import get_task, task_of
from .transport import TransportSchedule
from .weight_files import check_weight_folder


@dataclass
class TRGLOutput(ModelOutput):
    """Output of [`TRGLModel`].

    Args:
        loss (`torch.Tensor`, *optional*):
            Training: the sum of the trained modules' TRGL losses. Evaluation: the last computed module's
            cross-entropy.
        logits (`torch.Tensor`, *optional*):
            Logits of the last computed module's head, `(batch, num_labels)` (`(batch, length, vocab_size)` for a
            causal LM). `None` for a causal LM whose last computed module trains (gradients enabled, `labels` given):
            its loss is computed over sequence chunks (`TRGLConfig.lm_loss_chunk_tokens`) and its whole logits never
            exist; evaluation (`no_grad`) and calls without `labels` return them as before.
        module_logits (`torch.Tensor`):
            Logits of every computed module's head, `(batch, num_computed_modules, num_labels)`; `None` for causal
            LMs (one module's vocabulary-sized logits are alive at a time; `module_losses` has every module's loss).
        module_losses (`torch.Tensor`, *optional*):
            Cross-entropy of every computed module, `(num_computed_modules,)`.
        transport (`torch.Tensor`):
            Transport cost (sum over residual branches of mean(r ** 2), the mean over batch x features, or over
            the real tokens x features of padded text) of every computed module.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    module_logits: torch.Tensor | None = None
    module_losses: torch.Tensor | None = None
    transport: torch.Tensor | None = None


@dataclass
class ModuleStep:
    """What one module produced on one batch (yielded by [`TRGLModel.iter_modules`]).

    `logits` is `None` for a head that did not run (`frozen_heads=False`) and for a causal LM module that trains with
    `labels`: its loss is computed over sequence chunks, never from whole `(batch, length, vocab)` logits.
    """

    index: int
    hidden_state: torch.Tensor
    logits: torch.Tensor | None
    transport: torch.Tensor
    task_loss: torch.Tensor | None
    loss: torch.Tensor | None
    trainable: bool


class TRGLModel(PreTrainedModel):
    r"""
    A base network cut into `config.num_modules` consecutive modules, each followed by an auxiliary head, trained
    module-wise with the TRGL loss (module k: cross-entropy of head k plus 1 / (2 tau_k) times the kinetic energy of
    its residual branches). Module 1 also holds the stem; the last module's head is the classifier.

    Build one from a Hub or local model with [`TRGLModel.from_base`]; train it with [`TRGLTrainer`]; export any
    prefix (modules 1..k + head k) as a standalone model with [`TRGLModel.export_stage`].

    Example:
    ```python
    >>> from transformers import ResNetConfig, ResNetForImageClassification
    >>> from trgl_hf import TRGLConfig, TRGLModel
    >>> base = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2],
    ...                                                  layer_type="basic", num_labels=3))
    >>> model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, image_size=32))
    >>> model(pixel_values=torch.randn(4, 3, 32, 32)).module_logits.shape
    torch.Size([4, 2, 3])
    ```
    """

    config_class = TRGLConfig
    base_model_prefix = "trgl"
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True
    _no_split_modules: list[str] = []

    def __init__(
        self,
        config: TRGLConfig,
        backbone: nn.Module | None = None,
        head_template: nn.Module | None = None,
        heads: nn.ModuleList | None = None,
    ):
        super().__init__(config)
        if config.base_config is None or config.split is None or config.module_output_shapes is None:
            raise ValueError(
                "A TRGLModel is built from a base model: use `TRGLModel.from_base(model, config)` or "
                "`TRGLModel.from_pretrained(path)`."
            )
        base_config = config.base_config
        spec = architecture_named((base_config.architectures or [""])[0], base_config.model_type)
        if backbone is not None:  # the user's model: post_init must not initialise any of it again (e.g. LoRA layers
            given = [backbone, *([head_template] if head_template is not None else []), *(heads or [])]
            for module in (m for owner in given for m in owner.modules()):
                mark_initialized(module)  # injected after the base's own initialisation)
        if backbone is None:
            task_model = task_model_from_config(base_config)
            if config.peft_config:  # a LoRA base: the same adapters, before the saved weights are loaded
                inject_lora(task_model, config.peft_config)
            backbone, head_template = spec.adapter.split_task_model(task_model, spec)
        self.backbone = backbone
        self.adapter = spec.adapter(self.backbone, head_template, spec)
        self.task = get_task(config.task).for_labels(config.id2label)
        self.main_input_name = self.adapter.main_input_name
        check_split(config.split, len(self.adapter.blocks))
        shapes = config.module_output_shapes
        probes = [BlockProbe(channels=shape[0], spatial_size=tuple(shape[1:]), activation_bytes=0) for shape in shapes]
        self.heads = heads if heads is not None else build_heads(self.adapter, config, probes)
        self.adapter.head_template = None
        self.register_buffer("multipliers", torch.full((self.num_modules,), float(config.multiplier_init)))
        self.register_buffer("energy_scale", torch.zeros(self.num_modules))  # tau_scale="relative": E_k, 0 = unset
        self._scaled_modules: set[int] = set()
        self._checkpointing: BlockCheckpointing | None = None
        self.trainable_modules: tuple[int, ...] = tuple(range(self.num_modules))
        self._members = self._group_members()
        self.cached_input_module: int | None = None
        self.evaluated_modules: int | None = None
        self.post_init()

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_base(
        cls,
        base_model: PreTrainedModel | str | os.PathLike,
        config: TRGLConfig | None = None,
        **config_kwargs: Any,
    ) -> TRGLModel:
        """Cut a task model (e.g. `ResNetForImageClassification`) into modules and attach auxiliary heads.

        Args:
            base_model (`PreTrainedModel` or `str`):
                The model to cut, built from a config or loaded with `from_pretrained`; or a Hub id / local path,
                loaded with `AutoModelForImageClassification.from_pretrained` (pass `num_labels` in
                `config_kwargs` to replace its classifier).
            config (`TRGLConfig`, *optional*):
                How to cut and train it. Defaults to `TRGLConfig(**config_kwargs)`.
            config_kwargs:
                Fields of [`TRGLConfig`] (when `config` is None) and, for a path, `num_labels`.

        Returns:
            [`TRGLModel`]: sharing the base model's block weights; the last head starts from the base classifier
            when their shapes match.

        Raises:
            `ValueError`: the model cannot be cut, or K / `split` / `tau` do not fit it.

        Example:
        ```python
        >>> from trgl_hf import TRGLModel
        >>> model = TRGLModel.from_base("microsoft/resnet-18", num_modules=4, tau=10.0, num_labels=10)
        ```
        """
        base_model = _base_model_to_cut(base_model, config, config_kwargs)
        config = copy.deepcopy(config) if config is not None else TRGLConfig(**config_kwargs)
        if is_peft_model(base_model):
            base_model, config.peft_config = unwrap_peft_model(base_model)
        spec = architecture_of(base_model)
        _check_family(config, base_model, spec.adapter)
        task = _task_to_train(config, base_model, spec)
        backbone, head_template = spec.adapter.split_task_model(base_model, spec)
        _record_base(config, base_model, spec.adapter)
        cutter = spec.adapter(backbone, head_template, spec)
        explicit_head = _choose_aux_head(config, cutter)
        config.task = task.name
        probes = cutter.probe_blocks(cutter.probe_inputs(config.image_size))
        _choose_split(config, probes, len(cutter.blocks))
        config.tau_scale = resolve_tau_scale(config)
        config.tau = resolve_tau(config)
        config.validate_trgl()
        check_aux_head(config, cutter, base_model, explicit_head)
        heads = _build_module_heads(config, cutter, probes)
        _record_generation_config(config, base_model)
        return cls(config, backbone=backbone, head_template=head_template, heads=heads)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """Load a whole TRGL model (all modules and heads) saved with `save_pretrained`.

        A local folder is checked first: a stage folder (a native or `trgl_stage` model) or missing / corrupted
        weights raise a `ValueError` saying what to do instead.
        """
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir():
            config_path = folder / kwargs.get("subfolder", "") / "config.json"
            if config_path.exists():
                model_type = json.loads(config_path.read_text()).get("model_type")
                if model_type != TRGLConfig.model_type:
                    raise ValueError(
                        f"{folder} holds a {model_type!r} model, not a whole TRGL model: a stage folder loads with "
                        "`AutoModelForImageClassification` / `AutoModelForSequenceClassification` / "
                        "`AutoModelForCausalLM.from_pretrained(...)`."
                    )
            check_weight_folder(folder / kwargs.get("subfolder", ""))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(
        self, save_directory: str | os.PathLike, is_main_process: bool = True, *args: Any, **kwargs: Any
    ) -> None:
        """Save like `PreTrainedModel.save_pretrained`, plus the remote code that loads the folder with
        `AutoModel.from_pretrained(folder, trust_remote_code=True)`, trgl_hf installed or not.

        Writes `configuration_trgl_remote.py`, `modeling_trgl_remote.py` and `trgl_hf_bundle.py` (the trgl_hf sources
        the model needs, see `trgl_hf.modeling.remote_code`) and an `auto_map` naming them in `config.json`; with
        `push_to_hub=True` they are uploaded too. Where trgl_hf is imported, the folder loads with `AutoModel` and
        `TRGLModel.from_pretrained` without `trust_remote_code`, as before.

        A model sharded with FSDP2 by [`TRGLTrainer`] (`trgl_hf.distributed.fsdp`) must be saved from every process
        (they all take part in gathering the weights); the main process (`is_main_process`) writes a full, unsharded
        folder.
        """
        if is_sharded(self):  # FSDP2: every process takes part in gathering the full weights; the main one writes
            with full_parameters(self, keep=is_main_process):
                if is_main_process:
                    self.save_pretrained(save_directory, is_main_process, *args, **kwargs)
            return None
        should_save = getattr(self, "should_save_on_this_rank", lambda is_main: is_main)(is_main_process)
        if not should_save or os.path.isfile(save_directory):
            return super().save_pretrained(save_directory, is_main_process, *args, **kwargs)
        write_remote_code(save_directory)
        config = self.config
        had_auto_map, previous_auto_map = "auto_map" in config.__dict__, getattr(config, "auto_map", None)
        config.auto_map = {**(previous_auto_map or {}), **remote_auto_map()}
        try:
            # A config class loaded through remote code is registered for `AutoConfig`; transformers would then copy
            # `configuration_trgl.py` alone into the folder and point `auto_map` at it.
            with auto_class_cleared(config):
                return super().save_pretrained(save_directory, is_main_process, *args, **kwargs)
        finally:
            if had_auto_map:
                config.auto_map = previous_auto_map
            else:
                del config.auto_map

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoModel") -> None:
        """Does nothing: `save_pretrained` writes this model's remote code itself.

        transformers calls it on classes loaded through remote code; its `custom_object_save` would then copy
        `modeling_trgl.py` alone (not the modules it imports) into every saved folder.
        """

    def _get_files_timestamps(self, working_dir: str | os.PathLike) -> dict[str, float]:
        """`save_pretrained(push_to_hub=True)` uploads the files changed since this snapshot: leaving the remote-code
        files (written before it) out of it uploads them too."""
        timestamps = super()._get_files_timestamps(working_dir)
        return {name: time for name, time in timestamps.items() if name not in REMOTE_CODE_FILES}

    def _init_weights(self, module: nn.Module) -> None:
        """The backbone keeps its own (pretrained or initialised) weights; heads use PyTorch's default init."""

    # ------------------------------------------------------------------ structure

    @property
    def num_modules(self) -> int:
        """Number of modules K."""
        return len(self.config.split)

    def module_block_range(self, index: int) -> range:
        """Indices of the residual blocks of module `index` (0-based)."""
        start = sum(self.config.split[:index])
        return range(start, start + self.config.split[index])

    def _group_members(self) -> list[list[nn.Module]]:
        """Per module: every `nn.Module` it owns (flat; the stem's too for module 0)."""
        owners_per_module = []
        for index in range(self.num_modules):
            owners = []
            for block_index in self.module_block_range(index):
                owners += [self.adapter.blocks[block_index], *self.adapter.block_extras(block_index)]
            owners_per_module.append(owners + [self.heads[index]])
        owners_and_unused = [owner for owners in owners_per_module for owner in owners]
        owners_and_unused += self.adapter.unused_backbone_modules()
        owned_modules = {id(m) for owner in owners_and_unused for m in owner.modules()}
        stem_modules = [m for m in self.backbone.modules() if id(m) not in owned_modules]
        self._owners, self._stem_modules = owners_and_unused, {id(m) for m in stem_modules}
        members = []
        for index, owners in enumerate(owners_per_module):
            modules = [m for owner in owners for m in owner.modules()]
            members.append(stem_modules + modules if index == 0 else modules)
        return members

    def module_parameters(self, index: int) -> list[nn.Parameter]:
        """Parameters of module `index` (0-based): its blocks, its head, and the stem for module 0.

        Read from the modules at every call: `from_pretrained` replaces parameter objects after `__init__`."""
        owned = {id(p) for owner in self._owners for p in owner.parameters()} if index == 0 else set()
        seen, params = set(), []
        for module in self._members[index]:
            for param in module.parameters(recurse=False):
                if id(module) in self._stem_modules and id(param) in owned:
                    continue  # a stem module sharing a block's or a head's parameter: it is theirs
                if id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
        return params

    def module_buffers(self, indices: Iterable[int] | None = None) -> list[torch.Tensor]:
        """Buffers (e.g. BatchNorm statistics) of the modules in `indices` (0-based; all modules by default), the
        stem's with module 0, plus the model's own (`multipliers`) when all are asked for."""
        own = [self.multipliers, self.energy_scale] if indices is None else []
        indices = range(self.num_modules) if indices is None else indices
        return [b for index in indices for module in self._members[index] for b in module.buffers(recurse=False)] + own

    def set_trainable_modules(self, indices: Iterable[int]) -> None:
        """Train only the modules in `indices` (0-based): the others get `requires_grad=False` and stay in eval mode.

        Call it before building an optimizer or a DDP wrapper (the trainer does).
        """
        indices = tuple(sorted(set(indices)))
        for index in indices:
            if not 0 <= index < self.num_modules:
                raise ValueError(f"Module index {index} out of range for {self.num_modules} modules.")
        self.trainable_modules = indices
        for param in self.parameters():
            param.requires_grad_(False)
        frozen = frozen_parameter_ids(self.backbone) if self.config.peft_config else set()
        for index in indices:
            for param in self.module_parameters(index):
                if id(param) not in frozen:  # a LoRA base's own weights never train
                    param.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> TRGLModel:
        """Like `nn.Module.train`, but modules that are not being trained always stay in eval mode."""
        super().train(mode)
        if mode:
            for index in range(self.num_modules):
                if index not in self.trainable_modules:
                    for module in self._members[index]:
                        module.training = False
        return self

    @property
    def transport_schedule(self) -> TransportSchedule:
        """How much each module's transport cost weighs (the config's rule and the multiplier state)."""
        return TransportSchedule(self.config, self.multipliers, self.energy_scale)

    @contextmanager
    def phase(
        self, trainable: Iterable[int], cached_from: int | None = None, evaluated: int | None = None
    ) -> Iterator[TRGLModel]:
        """Train one phase: only `trainable` modules train, and everything is restored on exit.

        Args:
            trainable (`Iterable[int]`): 0-based modules that train (the others are frozen, in eval mode).
            cached_from (`int`, *optional*): the first module runs on cached prefix outputs (`trgl_hidden_states`)
                instead of the raw inputs (sequential mode with a prefix cache).
            evaluated (`int`, *optional*): how many leading modules `forward` evaluates (the trained ones).
        """
        previous = (self.trainable_modules, self.cached_input_module, self.evaluated_modules)
        self.set_trainable_modules(trainable)
        self.cached_input_module, self.evaluated_modules = cached_from, evaluated
        try:
            yield self
        finally:
            self.set_trainable_modules(previous[0])
            self.cached_input_module, self.evaluated_modules = previous[1:]

    # ------------------------------------------------------------------ forward

    def iter_modules(
        self,
        labels: torch.Tensor | None = None,
        trgl_hidden_states: torch.Tensor | None = None,
        last_module: int | None = None,
        frozen_heads: bool = True,
        **inputs: Any,
    ) -> Iterator[ModuleStep]:
        """Run the modules one after another, yielding each module's output, logits and loss as soon as it exists.

        Each trainable module reads its predecessor's output *detached*, so its loss can be backpropagated (and its
        graph freed) before the next module runs: that is how parallel training keeps one module's graph alive.
        Modules that are not trainable run under `torch.no_grad()`.

        Args:
            labels (`torch.Tensor`, *optional*): class indices; needed for losses.
            trgl_hidden_states (`torch.Tensor`, *optional*):
                Cached output of module `self.cached_input_module - 1`; computation starts at
                `self.cached_input_module`.
            last_module (`int`, *optional*): last module to run (0-based); defaults to the last trainable module
                in training mode and to module `evaluated_modules` (all modules when unset) in eval mode.
            frozen_heads (`bool`, *optional*, defaults to `True`): run the heads of modules that are not trained
                (`False` skips them — their `logits` and losses are then `None` — when only the trained modules'
                losses are needed, as in a training step).
            inputs: the base model's inputs (e.g. `pixel_values`).
        """
        last_module = self._default_last_module() if last_module is None else last_module
        first_module, state = self._first_module_and_state(trgl_hidden_states, inputs)
        for index in range(first_module, last_module + 1):
            state, step = self._run_module(index, state, labels, inputs, frozen_heads)
            yield step

    def _default_last_module(self) -> int:
        """The last module (0-based) to run when none is named: the last trainable one in training mode, else module
        `evaluated_modules` (all modules when unset)."""
        if self.training and self.trainable_modules:
            return max(self.trainable_modules)
        return (self.evaluated_modules or self.num_modules) - 1

    def _first_module_and_state(
        self, trgl_hidden_states: torch.Tensor | None, inputs: dict[str, Any]
    ) -> tuple[int, BlockState | None]:
        """Where the run starts: module `cached_input_module` on the cached prefix outputs, else module 0 on the raw
        inputs (state None: the stem embeds them)."""
        if trgl_hidden_states is None:
            return 0, None
        if self.cached_input_module is None:
            raise ValueError("`trgl_hidden_states` given but `cached_input_module` is not set.")
        with torch.no_grad():
            state = self.adapter.state_from_cache(trgl_hidden_states, **inputs)
        return self.cached_input_module, state

    def _run_module(
        self,
        index: int,
        state: BlockState | None,
        labels: torch.Tensor | None,
        inputs: dict[str, Any],
        frozen_heads: bool,
    ) -> tuple[BlockState, ModuleStep]:
        """Run module `index` on its predecessor's output `state` (detached when it trains; None: embed the inputs),
        with gradients only when it trains; returns its output and its step."""
        trainable = index in self.trainable_modules and torch.is_grad_enabled()
        schedule = self.transport_schedule
        weight, active = schedule.weight(index), schedule.is_active(index)
        with torch.set_grad_enabled(trainable):
            if state is None:
                state = self.adapter.embed(**inputs)
            elif trainable:
                state = state.detach()
            state, transport = self._run_module_blocks(index, state, trainable, trainable and active)
            if trainable and self.training and schedule.is_relative and index not in self._scaled_modules:
                self._measure_energy_scale(index, transport)
                weight = schedule.weight(index)
            logits, task_loss = self._module_head(index, state, inputs, labels, trainable, frozen_heads)
            loss = trgl_loss(task_loss, transport, weight) if task_loss is not None else None
        return state, ModuleStep(index, state.hidden, logits, transport, task_loss, loss, trainable)

    def _run_module_blocks(
        self, index: int, state: BlockState, trainable: bool, measure: bool
    ) -> tuple[BlockState, torch.Tensor]:
        """Run the blocks of module `index`: their output and the module's transport cost (the sum of its branches'
        energies, measured when `measure`; zero otherwise)."""
        energies = []
        for block_index in self.module_block_range(index):
            state, block_energies = self._run_block(block_index, state, trainable, measure)
            energies.extend(block_energies)
        transport = torch.stack(energies).sum() if energies else state.hidden.new_zeros((), dtype=torch.float32)
        return state, transport

    def _module_head(
        self,
        index: int,
        state: BlockState,
        inputs: dict[str, Any],
        labels: torch.Tensor | None,
        trainable: bool,
        frozen_heads: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`(logits, task loss)` of module `index`'s head: a training language model's loss is computed by chunks (no
        whole logits); a module that does not train runs its head only with `frozen_heads`."""
        if trainable and labels is not None and self.task.is_language_model:
            return None, self._chunked_lm_loss(index, state, inputs, labels)
        if not (trainable or frozen_heads):
            return None, None
        logits = self.head_logits(index, state, inputs)
        task_loss = self.task.loss(logits, labels, self.config.label_smoothing) if labels is not None else None
        return logits, task_loss

    def head_logits(self, index: int, state: BlockState, inputs: dict[str, Any]) -> torch.Tensor:
        """Logits of head `index` (0-based) for `state`, the output of module `index`.

        A tied decoder head (`aux_head="tied"`) projects with the shared vocabulary matrix, bound for the call: module
        1's head trains it, later heads read it detached (module 1 owns it).
        """
        head = self.heads[index]
        if not isinstance(head, TiedLMHead):
            return self.adapter.head_logits(head, state, inputs)
        with head.projecting_with(self.adapter.shared_projection(self.heads), trainable=index == 0):
            return self.adapter.head_logits(head, state, inputs)

    def _chunked_lm_loss(
        self, index: int, state: BlockState, inputs: dict[str, Any], labels: torch.Tensor
    ) -> torch.Tensor:
        """Module `index`'s next-token loss, computed over sequence chunks of `lm_loss_chunk_tokens` tokens, each
        recomputed in backward: the module's `(batch, length, vocab)` logits never exist whole (same value and
        gradients as `task.loss` on the whole logits)."""
        vocab_size = int(getattr(self.backbone.config, "vocab_size", 0) or 0)
        chunk_tokens = lm_loss_chunk_tokens(self.config.lm_loss_chunk_tokens, vocab_size)

        def logits_of(hidden: torch.Tensor) -> torch.Tensor:
            return self.head_logits(index, state.with_hidden(hidden), inputs)

        return chunked_causal_lm_loss(
            state.hidden, labels, logits_of, chunk_tokens, self.config.label_smoothing, shift=self.task.shifts_labels
        )

    def _run_block(
        self, index: int, state: BlockState, trainable: bool, energy: bool
    ) -> tuple[BlockState, list[torch.Tensor]]:
        """Run block `index`: checkpointed when it trains and activation checkpointing is on."""
        checkpointing = self._checkpointing
        if checkpointing is not None and trainable and self.training and checkpointing.covers(index):
            return self.adapter.run_block_checkpointed(index, state, energy, checkpointing.function)
        return self.adapter.run_block(index, state, energy)

    # ------------------------------------------------------------------ activation checkpointing

    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Checkpoint the residual blocks of the modules being trained: each keeps only its input, and runs again
        (branch energies included, with the same dropout masks) in backward. Gradients are those of a run without
        it; frozen modules run without gradients and need none. `TrainingArguments(gradient_checkpointing=True)`
        (or `activation_checkpointing=True`) calls it.

        Args:
            activation_checkpointing_kwargs (`dict`, *optional*): options of `torch.utils.checkpoint.checkpoint`
                (`preserve_rng_state`, `determinism_check`, `debug`, `context_fn`); `use_reentrant` must be False
                (the default here).
            every_n_layers (`int`, *optional*, defaults to 1): checkpoint every n-th block only.
            offload (`bool`, *optional*, defaults to `False`): keep the checkpointed inputs in host memory.

        Raises:
            `ValueError`: `use_reentrant=True`, an unknown option, or `every_n_layers < 1`.
        """
        self._checkpointing = BlockCheckpointing(activation_checkpointing_kwargs, every_n_layers, offload)

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Same as [`~TRGLModel.activation_checkpointing_enable`] (transformers' older name)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        """Run blocks without checkpointing again."""
        self._checkpointing = None

    def gradient_checkpointing_disable(self) -> None:
        """Same as [`~TRGLModel.activation_checkpointing_disable`] (transformers' older name)."""
        self.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        """Whether the trained modules' blocks are checkpointed."""
        return self._checkpointing is not None

    @property
    def is_gradient_checkpointing(self) -> bool:
        """Same as `is_activation_checkpointing` (transformers' older name)."""
        return self.is_activation_checkpointing

    @torch.no_grad()
    def _measure_energy_scale(self, index: int, transport: torch.Tensor) -> None:
        """`tau_scale="relative"`: record module `index`'s branch energy on its first training batch (averaged over
        processes, so every rank uses the same scale). A scale already in the buffer (a resumed or loaded model) is
        kept; either way the host reads it once per module and model."""
        self._scaled_modules.add(index)
        if float(self.energy_scale[index]) > 0:
            return
        value = transport.detach().float().reshape(1).clone()
        mean_over_processes(value)
        if not float(value) > 0:
            raise ValueError(
                f"Module {index + 1}'s branch energy is {float(value)} on its first batch, so `tau_scale='relative'` "
                "has nothing to scale by: use `tau_scale='absolute'`."
            )
        self.energy_scale[index] = value.to(self.energy_scale)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        trgl_hidden_states: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> TRGLOutput:
        """Run the modules and their heads.

        Args:
            pixel_values (`torch.Tensor`, *optional*): images `(batch, channels, height, width)`.
            input_ids, attention_mask, token_type_ids (`torch.Tensor`, *optional*): token inputs `(batch, length)`.
            labels (`torch.Tensor`, *optional*): class indices `(batch,)`; token ids `(batch, length)` for causal
                language models (shifted inside; -100 is ignored) and masked LMs (-100 on the tokens not masked);
                class indices `(batch, length)` for token classification (-100 ignored).
            trgl_hidden_states (`torch.Tensor`, *optional*): cached output of the frozen prefix (sequential mode).

        Returns:
            [`TRGLOutput`]: in training mode `loss` sums the trainable modules' TRGL losses (one backward then gives
            every module exactly its own gradient); in eval mode it is the last module's cross-entropy.
        """
        given = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids}  # fmt: skip
        kwargs.update({name: value for name, value in given.items() if value is not None})
        steps: list[ModuleStep] = []
        for step in self.iter_modules(labels=labels, trgl_hidden_states=trgl_hidden_states, **kwargs):
            if self.task.is_language_model and steps:  # one module's (batch, length, vocab) logits alive at a time
                steps[-1].logits = None
            steps.append(step)
        loss = None
        if labels is not None:
            if self.training and any(step.trainable for step in steps):
                loss = torch.stack([step.loss for step in steps if step.trainable]).sum()
            else:
                loss = steps[-1].task_loss
        return TRGLOutput(
            loss=loss,
            logits=steps[-1].logits,
            module_logits=torch.stack([step.logits for step in steps], dim=1)
            if not self.task.is_language_model
            else None,
            module_losses=torch.stack([step.task_loss for step in steps]) if labels is not None else None,
            transport=torch.stack([step.transport.detach() for step in steps]),
        )

    # ------------------------------------------------------------------ export

    def export_stage(self, stage: int, share_weights: bool = False) -> PreTrainedModel:
        """Modules 1..`stage` with head `stage` as a standalone model with the same logits.

        A `"linear"` head gives the family's native model (e.g. a shallower `ResNetForImageClassification`); a
        `"conv"` head gives a `TRGLStageForImageClassification` that loads with `trust_remote_code=True`.

        Args:
            stage (`int`): 1-based index of the last module kept.
            share_weights (`bool`, *optional*, defaults to `False`):
                Whether the stage's parameters and persistent buffers are this model's tensors themselves (same
                storage) instead of copies. The stage is built on the meta device and given the tensors by
                assignment: no second copy of the weights in memory and no random initialisation, which matters at
                the last stage of a large model. Its non-persistent buffers (e.g. rotary `inv_freq`) are copies of
                this model's. Tensors that must be converted are copied: those of a model not on CPU and LoRA
                weights (merged on a copy). Meant for writing the stage right away (`save_pretrained`): the shared
                stage must not be trained or modified (it would change this model), and it changes when this model
                trains further. Its parameters have `requires_grad=False`. Where a family cannot be built this way
                (a tensor left on the meta device), the stage is copied as with `False`, with a warning. `False`: an
                independent copy.

        Returns:
            `PreTrainedModel`: in eval mode, on CPU, in the stage's dtype (a bfloat16 base gives bfloat16 stages).
        """
        if not 1 <= stage <= self.num_modules:
            raise ValueError(f"`stage` must be between 1 and {self.num_modules}, got {stage}.")
        num_blocks = sum(self.config.split[:stage])
        head = self.heads[stage - 1]
        if isinstance(head, TiedLMHead):
            with head.projecting_with(self.adapter.shared_projection(self.heads), trainable=stage == 1):
                exported = self.adapter.export_stage(num_blocks, head, self.config.num_labels, share_weights)
        else:
            exported = self.adapter.export_stage(num_blocks, head, self.config.num_labels, share_weights)
        exported.config.id2label, exported.config.label2id = dict(self.config.id2label), dict(self.config.label2id)
        exported.config.dtype = self.adapter.dtype  # saved as the stage's dtype (a bfloat16 base: bfloat16 stages)
        if hasattr(exported.config, "stage_index"):
            exported.config.stage_index, exported.config.num_stages = stage, self.num_modules
        generation = getattr(self.config, "base_generation_config", None)
        if generation and exported.can_generate():
            from transformers import GenerationConfig

            exported.generation_config = GenerationConfig.from_dict(dict(generation))
        return exported


class BlockCheckpointing:
    """How [`TRGLModel`] checkpoints the blocks of the modules it trains (see
    [`~TRGLModel.activation_checkpointing_enable`]).

    Args:
        options (`dict`, *optional*): keyword arguments of `torch.utils.checkpoint.checkpoint`.
        every_n_layers (`int`): checkpoint the blocks whose index is a multiple of it.
        offload (`bool`): keep the checkpointed inputs in (pinned) host memory.
    """

    def __init__(self, options: dict[str, Any] | None, every_n_layers: int = 1, offload: bool = False):
        options = dict(options or {})
        if options.get("use_reentrant", False):
            raise ValueError(
                "TRGLModel checkpoints its blocks with `use_reentrant=False` only: the reentrant variant gives no "
                "gradient to block inputs computed outside the block (attention masks, relative position "
                "embeddings) and cannot return the branch energies. Leave `use_reentrant` out of "
                "`gradient_checkpointing_kwargs` or set it to False."
            )
        allowed = set(inspect.signature(checkpoint).parameters) - {"function", "args", "kwargs"}
        allowed.add("preserve_rng_state")  # read from checkpoint's **kwargs
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(
                f"Unknown activation checkpointing option(s) {unknown}: `gradient_checkpointing_kwargs` takes the "
                f"options of torch.utils.checkpoint.checkpoint ({sorted(allowed)})."
            )
        if int(every_n_layers) < 1:
            raise ValueError(f"`every_n_layers` must be at least 1, got {every_n_layers}.")
        self.options = {**options, "use_reentrant": False}
        self.every_n_layers, self.offload = int(every_n_layers), bool(offload)

    def covers(self, block_index: int) -> bool:
        """Whether block `block_index` (0-based, over the whole network) is checkpointed."""
        return block_index % self.every_n_layers == 0

    def function(self, run: Any, hidden: torch.Tensor) -> Any:
        """`checkpoint(run, hidden)` with the options (and host offloading)."""
        if not self.offload or hidden.device.type == "cpu":
            return checkpoint(run, hidden, **self.options)
        with torch.autograd.graph.save_on_cpu(pin_memory=True, device_type=hidden.device.type):
            return checkpoint(run, hidden, **self.options)


__all__ = ["TRGLModel", "TRGLOutput"]


def build_heads(adapter: Any, config: TRGLConfig, probes: list[BlockProbe]) -> nn.ModuleList:
    """Every module's auxiliary head, built once (`probes[k]`: module k's output)."""
    adapter.first_module_blocks = config.split[0]
    return nn.ModuleList(
        adapter.build_head(
            config.aux_head,
            probe,
            config.num_labels,
            config.head_pool_size,
            is_last=index == len(probes) - 1,
            num_blocks=sum(config.split[: index + 1]),
        )
        for index, probe in enumerate(probes)
    )


DECODER_TIED_DEFAULT = "tied"
"""The head of a causal LM built from a config whose LM head is not its input embedding, when `aux_head` is unset.

Chosen on Tiny Shakespeare's validation split (character-level GPT-2, 4 layers, K = 4, 100 steps per module, seeds
0 and 1; `benchmarks/results/decoder_heads.md`): on the untied base, tied heads reached a 2.2% lower
last-module perplexity than native heads in parallel mode (the default `trgl_mode`) on both seeds and a 0.4% / 1.0%
higher one in sequential mode, with K - 1 fewer vocabulary matrices (and their gradients and optimizer states). On the
base with tied embeddings native heads were better in both modes (1.9% parallel, 5.3% sequential), and pretrained
decoders were not measured: both keep `"native"`."""


def default_decoder_head(config: TRGLConfig, adapter: Any) -> str:
    """`aux_head` when left unset, after `resolve_aux_head`: `DECODER_TIED_DEFAULT` for a causal LM built from a
    config whose LM head is untied from its embedding (see `DECODER_TIED_DEFAULT` for why), else unchanged."""
    untied_decoder = getattr(adapter, "output_name", None) is not None and not adapter.ties_embeddings
    if config.aux_head == "native" and untied_decoder and not is_pretrained_base(config):
        if adapter.tied_head_problem() is None:
            return DECODER_TIED_DEFAULT
    return config.aux_head


def tied_head_refusal(config: TRGLConfig, adapter: Any, base_model: nn.Module) -> str | None:
    """Why `aux_head="tied"` cannot be kept exact for the whole run of this base, naming the fix; `None` if it can.

    Refused: models that are not causal LMs with a linear LM head; LoRA bases (the shared projection is a base
    weight that LoRA may adapt, and the stages' PEFT adapter export assumes native heads: untested); a base whose LM
    head is tied to its embedding while its configuration says otherwise, or the reverse (its stages would load
    differently).
    """
    if config.peft_config:
        return (
            "`aux_head='tied'` is not supported on a LoRA base: use `aux_head='native'`, or merge the adapters into "
            "the base (`merge_and_unload()`) before cutting it."
        )
    problem = adapter.tied_head_problem()
    if problem is not None:
        return problem
    output, embedding = base_model.get_output_embeddings(), base_model.get_input_embeddings()
    tied = output.weight is getattr(embedding, "weight", None)
    if tied != adapter.ties_embeddings:
        return (
            f"{type(base_model).__name__}'s LM head is {'' if tied else 'not '}the input embedding, but its config "
            f"has `tie_word_embeddings={not tied}`: its stages would load {'un' if tied else ''}tied. Set "
            f"`config.tie_word_embeddings={tied}` (or call `tie_weights()`) before cutting it, or use "
            "`aux_head='native'`."
        )
    return None


def check_aux_head(config: TRGLConfig, adapter: Any, base_model: nn.Module, explicit: bool) -> None:
    """Refuse an explicit `aux_head="tied"` this library cannot keep exact (see [`tied_head_refusal`]); a default
    `"tied"` that cannot be kept falls back to `"native"`."""
    if config.aux_head != "tied":
        return
    problem = tied_head_refusal(config, adapter, base_model)
    if problem is None:
        return
    if explicit:
        raise ValueError(problem)
    config.aux_head = "native"


def load_task_model(name_or_path: str, **kwargs: Any) -> PreTrainedModel:
    """Load a task model from the Hub or a local folder with the class named in its configuration.

    Falls back to `AutoModelForImageClassification` when the configuration names no known architecture.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path)
    for name in config.architectures or []:
        model_class = getattr(__import__("transformers"), name, None)
        if model_class is not None:
            return model_class.from_pretrained(name_or_path, **kwargs)
    return AutoModelForImageClassification.from_pretrained(name_or_path, **kwargs)


# ---------------------------------------------------------------------------------------------- from_base's steps


def _base_model_to_cut(
    base_model: PreTrainedModel | str | os.PathLike, config: TRGLConfig | None, config_kwargs: dict[str, Any]
) -> nn.Module:
    """The model `from_base` cuts: `base_model` itself, or loaded from its path (`num_labels` taken from
    `config_kwargs`, which then also gets the path as `base_model_name_or_path`)."""
    _check_from_base_keywords(base_model, config, config_kwargs)
    if isinstance(base_model, (str, os.PathLike)):
        load_kwargs = {}
        if "num_labels" in config_kwargs:
            load_kwargs = {"num_labels": config_kwargs.pop("num_labels"), "ignore_mismatched_sizes": True}
        name_or_path = str(base_model)
        base_model = load_task_model(name_or_path, **load_kwargs)
        if config is None:
            config_kwargs.setdefault("base_model_name_or_path", name_or_path)
    if not isinstance(base_model, nn.Module):
        raise ValueError(f"`base_model` must be a transformers model or a path, got {type(base_model).__name__}.")
    return base_model


def _check_from_base_keywords(base_model: Any, config: TRGLConfig | None, config_kwargs: dict[str, Any]) -> None:
    """Refuse keywords `from_base` would ignore: config fields beside a `config`, `num_labels` beside a model."""
    if config is not None and set(config_kwargs) - {"num_labels"}:
        raise ValueError(
            f"`from_base` got a `config` and also {sorted(set(config_kwargs) - {'num_labels'})}: these keywords "
            "would be ignored; set them on the TRGLConfig instead."
        )
    if "num_labels" in config_kwargs and not isinstance(base_model, (str, os.PathLike)):
        raise ValueError(
            "`num_labels` is only used when `base_model` is a path to load; a model object keeps its classifier: "
            "build it with the `num_labels` you need."
        )


def _check_family(config: TRGLConfig, base_model: nn.Module, cutter_class: Any) -> None:
    """Refuse a `family` other than the one of the cutter the architecture registry chose."""
    if config.family is not None and config.family != cutter_class.family:
        raise ValueError(
            f"`family={config.family!r}` but {type(base_model).__name__} is cut by the "
            f"{cutter_class.family!r} cutter: leave `family` unset."
        )


def _task_to_train(config: TRGLConfig, base_model: nn.Module, spec: Any) -> Any:
    """The task of `base_model` (its class in the registry entry `spec`), refusing a label smoothing it cannot use."""
    task = task_of(base_model, spec.classes[type(base_model).__name__])
    if config.label_smoothing and not task.uses_cross_entropy:
        raise ValueError(f"`label_smoothing` applies to cross-entropy; the {task.name} task has none: set it to 0.")
    return task


def _record_base(config: TRGLConfig, base_model: nn.Module, cutter_class: Any) -> None:
    """Record in `config` what it keeps of the base model: its family, config, labels, name and image size (and
    refuse an `aux_head` the family does not have)."""
    base_config = copy.deepcopy(base_model.config)
    base_config.architectures = [type(base_model).__name__]
    config.family = cutter_class.family
    if config.aux_head is not None and config.aux_head not in cutter_class.head_kinds + ("native",):
        raise ValueError(
            f"`aux_head={config.aux_head!r}` does not fit the {cutter_class.family} family: use one of "
            f"{cutter_class.head_kinds}."
        )
    config.base_config = base_config
    config.num_labels = base_config.num_labels
    config.id2label, config.label2id = dict(base_config.id2label), dict(base_config.label2id)
    config.base_model_name_or_path = config.base_model_name_or_path or getattr(base_config, "_name_or_path", None)
    if config.image_size is None:
        config.image_size = square_side(getattr(base_config, "image_size", None))


def square_side(size: Any) -> int | None:
    """A base config's `image_size` as one side in pixels: an integer as it is, a square `(height, width)` pair as its
    side; `None` for anything else (a non-square pair: blocks are then probed at the default size)."""
    if isinstance(size, (list, tuple)):
        return int(size[0]) if len(size) == 2 and size[0] == size[1] else None
    return size


def _choose_aux_head(config: TRGLConfig, cutter: Any) -> bool:
    """Resolve `config.aux_head` for this model; returns whether the user chose it (it is then never replaced)."""
    explicit_head = config.aux_head is not None
    config.aux_head = resolve_aux_head(config, cutter)
    if not explicit_head:
        config.aux_head = default_decoder_head(config, cutter)
    return explicit_head


def _choose_split(config: TRGLConfig, probes: list[BlockProbe], num_blocks: int) -> None:
    """Set `config.split` (blocks per module) and `num_modules`: the given split, else by `split_policy`."""
    if config.split is not None:
        check_split(config.split, num_blocks)
    elif config.split_policy == "balanced":
        check_num_modules(num_blocks, config.num_modules)
        config.split = balanced_split([p.activation_bytes for p in probes], config.num_modules)
    else:
        config.split = equal_split(num_blocks, config.num_modules)
    config.num_modules = len(config.split)


def _build_module_heads(config: TRGLConfig, cutter: Any, probes: list[BlockProbe]) -> nn.ModuleList:
    """Every module's auxiliary head, built once here from the probe of its last block (whose output shape is
    recorded in `config.module_output_shapes`)."""
    ends = [sum(config.split[: k + 1]) - 1 for k in range(config.num_modules)]
    heads = build_heads(cutter, config, [probes[end] for end in ends])
    config.module_output_shapes = [[probes[end].channels, *probes[end].spatial_size] for end in ends]
    return heads


def _record_generation_config(config: TRGLConfig, base_model: nn.Module) -> None:
    """Keep a generating base's generation config, so that the stages of a language model generate like it."""
    generation = getattr(base_model, "generation_config", None)
    if generation is not None and base_model.can_generate():
        config.base_generation_config = generation.to_diff_dict()
