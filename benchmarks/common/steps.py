"""One training step of each measured mode, written against the public API, for the exact memory trace.

These steps are only traced (`memory.traced_step`); every timing goes through `TRGLTrainer` / `Trainer`
(`timing.py`). A TRGL step is the trainer's: each trainable module's loss is backpropagated as soon as the module's
step exists (`TRGLModel.iter_modules`), then one optimizer step.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import trgl_hf

from .memory import (
    MallocSampler,
    SavedTensorBytes,
    StepContext,
    mallinfo2_in_use,
    optimizer_state,
    storage_bytes,
    traced_step,
)
from .models import resnet_blocks

Step = Callable[[StepContext], None]


def e2e_step_fn(model: nn.Module, optimizer, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> Step:
    params = list(model.parameters())

    def step(ctx: StepContext) -> None:
        with ctx.phase("fwd_bwd"):
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            del loss
        ctx.capture_grads(params)
        with ctx.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def checkpointed_forward(model: nn.Module, pixel_values: torch.Tensor, split: list[int]) -> torch.Tensor:
    """Logits of a CIFAR ResNet with `torch.utils.checkpoint` (non-reentrant) over consecutive groups of blocks.

    Segment 1 also holds the stem. As in `torch.utils.checkpoint.checkpoint_sequential`, the last segment is not
    checkpointed (it would be recomputed right away).
    """
    blocks = resnet_blocks(model)
    bounds = [(sum(split[:i]), sum(split[: i + 1])) for i in range(len(split))]

    def segment(start: int, end: int, first: bool):
        def run(hidden: torch.Tensor) -> torch.Tensor:
            if first:
                hidden = model.resnet.embedder(hidden)
            for block in blocks[start:end]:
                hidden = block(hidden)
            return hidden

        return run

    hidden = pixel_values
    for i, (start, end) in enumerate(bounds):
        run = segment(start, end, i == 0)
        hidden = checkpoint(run, hidden, use_reentrant=False) if i < len(bounds) - 1 else run(hidden)
    return model.classifier(model.resnet.pooler(hidden))


def checkpointed_step_fn(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, split: list[int]) -> Step:
    def step(ctx: StepContext) -> None:
        with ctx.phase("fwd_bwd"):
            logits = checkpointed_forward(model, x, split)
            loss = F.cross_entropy(logits, y)
            del logits
            loss.backward()
            del loss
        ctx.capture_grads(model.parameters())
        with ctx.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def trgl_step_fn(
    model: trgl_hf.TRGLModel,
    optimizer,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    cached: torch.Tensor | None = None,
    frozen_heads: bool = True,
    module_phases: bool = False,
) -> Step:
    """One TRGL step of the modules `model.phase(...)` made trainable (from `cached` prefix outputs when given).

    `module_phases` names a profiler range per module, so the trace says in which module the peak happens.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(inputs)
    if cached is not None:
        kwargs["trgl_hidden_states"] = cached

    def step(ctx: StepContext) -> None:
        with ctx.phase("fwd_bwd"):
            modules = model.iter_modules(labels=labels, frozen_heads=frozen_heads, **kwargs)
            index = model.cached_input_module or 0
            while True:
                with ctx.phase(f"module_{index + 1}") if module_phases else contextlib.nullcontext():
                    module_step = next(modules, None)
                    if module_step is None:
                        break
                    if module_step.trainable:
                        module_step.loss.backward()
                    del module_step
                index += 1
            del modules
        ctx.capture_grads(params)
        with ctx.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


@torch.no_grad()
def prefix_output(
    model: trgl_hf.TRGLModel,
    inputs: dict[str, torch.Tensor],
    index: int,
    previous: torch.Tensor | None = None,
    clone: bool = False,
) -> torch.Tensor:
    """Output of modules 0..index-1 (frozen, eval mode, no_grad) for the batch: module `index`'s prefix cache,
    from the raw inputs, or from module `index - 1`'s own cache `previous` (as sequential training builds it)."""
    kwargs = dict(inputs)
    cached_from = None
    if previous is not None:
        kwargs["trgl_hidden_states"], cached_from = previous, index - 1
    hidden = None
    with model.phase([index], cached_from=cached_from):
        for module_step in model.iter_modules(last_module=index - 1, frozen_heads=False, **kwargs):
            hidden = module_step.hidden_state
    return hidden.detach().clone() if clone else hidden


def cross_check_e2e(model, optimizer, x, y, first: dict[str, Any]) -> dict[str, Any]:
    """Another traced E2E step with two independent measurements: saved-tensor hooks and glibc's mallinfo2."""
    persistent = storage_bytes(list(model.parameters()) + list(model.buffers()) + optimizer_state(optimizer) + [x])
    saved = SavedTensorBytes(model, extra=[x])
    in_use = mallinfo2_in_use()
    sampler: dict[str, int] = {}

    def step(ctx: StepContext) -> None:
        mode = MallocSampler(in_use) if in_use is not None else contextlib.nullcontext()
        with mode:
            with ctx.phase("forward"), saved:
                loss = model(pixel_values=x, labels=y).loss
            with ctx.phase("backward"):
                loss.backward()
                del loss
            ctx.capture_grads(model.parameters())
            with ctx.phase("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        if in_use is not None:
            sampler["start"], sampler["peak"] = mode.start, mode.peak

    trace = traced_step(step)
    result = {
        "first_traced_step_peak_bytes": first["peak_bytes"],
        "steady_state_step_peak_bytes": persistent + trace["step_peak_bytes"] + storage_bytes([y]),
        "saved_tensor_hooks_bytes": saved.total,
        "profiler_forward_peak_above_start_bytes": trace["phase_peak_bytes"].get("forward"),
        "profiler_step_peak_above_start_bytes": trace["step_peak_bytes"],
        "residual_bytes": trace["residual_bytes"],
    }
    if sampler:
        result["mallinfo2_peak_above_start_bytes"] = sampler["peak"] - sampler["start"]
    return result


def branch_output_bytes(model, batch_size: int) -> list[int]:
    """Bytes per module of the residual-branch outputs (what a plain autograd energy would keep for backward),
    from forward hooks on the model's own blocks (eval mode, one image)."""
    numels: dict[int, int] = {}
    handles = [
        block.layer.register_forward_hook(lambda m, a, out, i=i: numels.__setitem__(i, out[0].numel()))
        for i, block in enumerate(model.adapter.blocks)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for _ in model.iter_modules(pixel_values=torch.zeros(1, 3, 32, 32), last_module=model.num_modules - 1):
                pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [4 * batch_size * sum(numels[i] for i in model.module_block_range(k)) for k in range(model.num_modules)]


def _mib(num_bytes: float) -> float:
    return round(num_bytes / 2**20, 2)


def trainer_step_memory(model, module_index: int, batch: dict[str, torch.Tensor], training_args, cached: bool):
    """Allocator-level peak of one training step of module `module_index` (0-based), as the trainer runs it: from
    cached outputs of the frozen prefix (`cached`), or recomputing the frozen prefix under no_grad inside the step."""
    from transformers import Trainer

    batch = dict(batch)
    cached_from = None
    if module_index > 0 and cached:  # trgl_prefix_cache: modules 2..K train on cached outputs of the frozen prefix
        with model.phase([module_index]), torch.no_grad():
            for step in model.iter_modules(
                last_module=module_index - 1, **{k: v for k, v in batch.items() if k != "labels"}
            ):
                hidden = step.hidden_state
        context = {k: v for k, v in batch.items() if k in model.adapter.context_input_names}
        batch, cached_from = {"trgl_hidden_states": hidden, "labels": batch["labels"], **context}, module_index
    with model.phase([module_index], cached_from=cached_from):
        params = [p for p in model.module_parameters(module_index) if p.requires_grad]
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
        optimizer = optimizer_cls(params, **optimizer_kwargs)

        def train_step(ctx=None):
            optimizer.zero_grad(set_to_none=True)
            for step in model.iter_modules(**batch):
                if step.trainable:
                    step.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, training_args.max_grad_norm)
            optimizer.step()

        train_step()  # warm-up: creates the optimizer state
        optimizer.zero_grad(set_to_none=True)
        with SavedTensorBytes(model) as saved:  # activations saved for backward (non-parameter storages)
            losses = [s.loss for s in model.iter_modules(**batch) if s.trainable]
        del losses
        gc.collect()
        seen: set[int] = set()
        weights = storage_bytes(list(model.parameters()) + list(model.buffers()), seen)
        trainable = sum(p.numel() * p.element_size() for p in params)
        optim_bytes = storage_bytes(optimizer_state(optimizer), seen)
        batch_bytes = storage_bytes(batch.values(), seen)
        trace = traced_step(train_step)
        baseline = weights + optim_bytes + batch_bytes
        result = {
            "module": module_index + 1,
            "weights_all_modules_mib": _mib(weights),
            "trainable_weights_mib": _mib(trainable),
            "gradients_mib": _mib(sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)),
            "optimizer_state_mib": _mib(optim_bytes),
            "batch_mib": _mib(batch_bytes),
            "saved_activations_mib": _mib(saved.total),
            "baseline_mib": _mib(baseline),
            "step_peak_above_baseline_mib": _mib(trace["step_peak_bytes"]),
            "alive_after_step_mib": _mib(trace["residual_bytes"]),
            "peak_mib": _mib(baseline + trace["step_peak_bytes"]),
            "peak_without_frozen_weights_mib": _mib(baseline + trace["step_peak_bytes"] - (weights - trainable)),
            "allocation_events": trace["num_allocation_events"],
        }
        optimizer.zero_grad(set_to_none=True)
    return result


def plain_trainer_step_memory(model, batch: dict[str, torch.Tensor], training_args) -> dict[str, Any]:
    """Allocator-level peak of one plain `Trainer` step (end-to-end, with or without gradient checkpointing, or a
    PEFT model whose trainable parameters are its adapters), the same step as `trainer_step_memory`: zero_grad -
    forward - backward - grad clipping - the Trainer's optimizer step, after a warm-up step that creates the state.
    The model is put in training mode (gradient checkpointing only acts in training mode)."""
    from transformers import Trainer

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
    optimizer = optimizer_cls(params, **optimizer_kwargs)

    def train_step(ctx=None):
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, training_args.max_grad_norm)
        optimizer.step()

    train_step()
    optimizer.zero_grad(set_to_none=True)
    with SavedTensorBytes(model) as saved:
        loss = model(**batch).loss
    del loss
    gc.collect()
    seen: set[int] = set()
    weights = storage_bytes(list(model.parameters()) + list(model.buffers()), seen)
    trainable = sum(p.numel() * p.element_size() for p in params)
    optim_bytes = storage_bytes(optimizer_state(optimizer), seen)
    batch_bytes = storage_bytes(batch.values(), seen)
    trace = traced_step(train_step)
    baseline = weights + optim_bytes + batch_bytes
    result = {
        "module": 1,
        "weights_all_modules_mib": _mib(weights),
        "trainable_weights_mib": _mib(trainable),
        "gradients_mib": _mib(sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)),
        "optimizer_state_mib": _mib(optim_bytes),
        "batch_mib": _mib(batch_bytes),
        "saved_activations_mib": _mib(saved.total),
        "baseline_mib": _mib(baseline),
        "step_peak_above_baseline_mib": _mib(trace["step_peak_bytes"]),
        "alive_after_step_mib": _mib(trace["residual_bytes"]),
        "peak_mib": _mib(baseline + trace["step_peak_bytes"]),
        "peak_without_frozen_weights_mib": _mib(baseline + trace["step_peak_bytes"] - (weights - trainable)),
        "allocation_events": trace["num_allocation_events"],
    }
    optimizer.zero_grad(set_to_none=True)
    return result
