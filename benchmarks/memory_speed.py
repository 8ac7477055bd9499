"""Peak training memory and time per step: end-to-end vs gradient checkpointing vs TRGL (parallel, sequential,
multi-lap), on the same model and batch.

    python benchmarks/memory_speed.py            # CIFAR ResNet-110, batch 256 (+ a batch-128 subset), K = 2..16
    python benchmarks/memory_speed.py --quick    # smoke mode: ResNet-20, batch 16, K in {2, 4} (under a minute)

Memory is measured exactly at the allocator level, not from the process RSS: every CPU tensor allocation and free
of one training step is recorded by `torch.profiler` (`profile_memory=True`, which hooks PyTorch's CPU allocator
and reports the requested bytes and the address of each block). The peak of a step is

    bytes of the training state alive at the start of the step (weights and buffers, optimizer state, the batch)
    + the maximum of the running sum of the step's allocations minus the frees of those allocations.

Allocations that end up as `.grad` tensors are identified by address (the blocks still alive when the gradients are
read, before the optimizer step), which splits the peak into weights, gradients, optimizer state, inputs and
activations (+ temporaries). The measurement is validated on toy cases with known answers (`validate_measurement`)
and cross-checked on the end-to-end step against saved-tensor hooks and glibc's `mallinfo2` (see the outputs).

Outputs: `memory_speed.json` (raw numbers and environment), `memory_speed.md` (tables), `memory_speed.png` (peak
memory relative to end-to-end vs K) in `--out-dir` (default `benchmarks/results`; a temporary folder with `--quick`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.autograd.graph import saved_tensors_hooks  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402

import trgl_hf  # noqa: E402
from trgl_hf.splitting import equal_split  # noqa: E402

MIB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[1]
PHASE_PREFIX = "bench::"
START = time.perf_counter()
LOAD_AT_START = os.getloadavg()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


def mib(num_bytes: float | None) -> float | None:
    return None if num_bytes is None else round(num_bytes / MIB, 2)


# ============================================================================ allocator-level measurement


def storage_bytes(tensors: Iterable[torch.Tensor], seen: set[int] | None = None) -> int:
    """Bytes of the distinct storages behind `tensors` (each counted once, also across calls sharing `seen`)."""
    seen = set() if seen is None else seen
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() == 0:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


class StepContext:
    """Passed to a step function: names phases and records which blocks are gradients (no-op when not tracing)."""

    def __init__(self, tracing: bool):
        self.tracing = tracing
        self.grad_marks: list[tuple[int, dict[int, int]]] = []

    def phase(self, name: str):
        return record_function(PHASE_PREFIX + name) if self.tracing else contextlib.nullcontext()

    def capture_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Remember the storages of the current `.grad` tensors (call after backward, before the optimizer)."""
        if not self.tracing:
            return
        grads = {}
        for param in params:
            if param.grad is not None:
                storage = param.grad.untyped_storage()
                grads[storage.data_ptr()] = storage.nbytes()
        self.grad_marks.append((time.perf_counter_ns(), grads))
        # A zero-length marker range gives the capture time on the profiler's clock.
        with record_function(PHASE_PREFIX + f"grad_mark_{len(self.grad_marks) - 1}"):
            pass


def _flatten_events(prof) -> tuple[list[tuple[int, int, int, int]], list[tuple[str, int, int]]]:
    """(time, order, ptr, signed bytes) of every CPU allocation event, and (name, start, end) of the bench ranges."""
    allocations, ranges = [], []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    order = 0
    while stack:
        node = stack.pop()
        tag = str(node.tag)
        if tag.endswith("Allocation"):
            fields = node.extra_fields
            if str(fields.device).startswith("cpu"):
                allocations.append((node.start_time_ns, fields.allocation_id, fields.ptr, int(fields.alloc_size)))
        elif node.name.startswith(PHASE_PREFIX):
            ranges.append((node.name[len(PHASE_PREFIX) :], node.start_time_ns, node.end_time_ns))
        stack.extend(node.children)
        order += 1
    # allocation_id increases with every allocator call, so it orders events that share a timestamp.
    allocations.sort(key=lambda event: (event[0], event[1]))
    return allocations, ranges


def analyse_trace(prof, ctx: StepContext) -> dict[str, Any]:
    """Peak of the running sum of one step's allocations, split into gradients and the rest, per phase.

    Frees of blocks allocated before the window are ignored (they are part of the persistent state or of garbage that
    the caller does not count); the residual (bytes allocated in the window and still alive at its end) must be ~0
    for a steady-state step.
    """
    allocations, ranges = _flatten_events(prof)
    marks = {name: start for name, start, _ in ranges if name.startswith("grad_mark_")}
    phases = [(name, start, end) for name, start, end in ranges if not name.startswith("grad_mark_")]

    # Pass 1: which allocation events are gradients (alive at a grad mark, at the address of a `.grad` storage).
    grad_events: set[int] = set()
    mark_times = sorted((marks[f"grad_mark_{i}"], grads) for i, (_, grads) in enumerate(ctx.grad_marks))
    live: dict[int, tuple[int, int]] = {}
    mark_index = 0
    for index, (timestamp, _, ptr, size) in enumerate(allocations):
        while mark_index < len(mark_times) and mark_times[mark_index][0] <= timestamp:
            for grad_ptr, grad_bytes in mark_times[mark_index][1].items():
                if grad_ptr in live and live[grad_ptr][1] == grad_bytes:
                    grad_events.add(live[grad_ptr][0])
            mark_index += 1
        if size > 0:
            live[ptr] = (index, size)
        elif ptr in live:
            del live[ptr]
    for _, grads in mark_times[mark_index:]:
        for grad_ptr, grad_bytes in grads.items():
            if grad_ptr in live and live[grad_ptr][1] == grad_bytes:
                grad_events.add(live[grad_ptr][0])

    # Pass 2: running sums.
    live = {}
    running = grads_live = 0
    peak = {"bytes": 0, "grads": 0, "time": None}
    phase_nongrad_peak = {name: 0 for name, _, _ in phases}
    phase_peak = {name: 0 for name, _, _ in phases}
    untracked_frees = 0
    for index, (timestamp, _, ptr, size) in enumerate(allocations):
        if size > 0:
            live[ptr] = (index, size)
            running += size
            if index in grad_events:
                grads_live += size
        else:
            if ptr not in live:
                untracked_frees += 1
                continue
            alloc_index, alloc_size = live.pop(ptr)
            running -= alloc_size
            if alloc_index in grad_events:
                grads_live -= alloc_size
        if running > peak["bytes"]:
            peak = {"bytes": running, "grads": grads_live, "time": timestamp}
        for name, start, end in phases:
            if start <= timestamp <= end:
                phase_peak[name] = max(phase_peak[name], running)
                phase_nongrad_peak[name] = max(phase_nongrad_peak[name], running - grads_live)
    peak_phase = None
    if peak["time"] is not None:
        inside = [(end - start, name) for name, start, end in phases if start <= peak["time"] <= end]
        peak_phase = min(inside)[1] if inside else "outside phases"
    return {
        "step_peak_bytes": peak["bytes"],
        "grads_at_peak_bytes": peak["grads"],
        "peak_phase": peak_phase,
        "phase_peak_bytes": phase_peak,
        "phase_nongrad_peak_bytes": phase_nongrad_peak,
        "grad_bytes_allocated": sum(allocations[i][3] for i in grad_events),
        "residual_bytes": running,
        "untracked_frees": untracked_frees,
        "num_allocation_events": len(allocations),
    }


def traced_step(step_fn: Callable[[StepContext], None]) -> dict[str, Any]:
    """Run one step under the allocator trace and analyse it."""
    gc.collect()
    gc.disable()  # no collection of older garbage inside the window
    ctx = StepContext(tracing=True)
    begin = time.perf_counter()
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step_fn(ctx)
    finally:
        gc.enable()
    elapsed = time.perf_counter() - begin
    result = analyse_trace(prof, ctx)
    result["traced_step_s"] = round(elapsed, 3)
    return result


def timed_steps(step_fn: Callable[[StepContext], None], count: int) -> tuple[list[float], list[float]]:
    """Wall time and CPU time (all threads of the process) of `count` untraced steps."""
    ctx = StepContext(tracing=False)
    walls, cpus = [], []
    for _ in range(count):
        begin, begin_cpu = time.perf_counter(), time.process_time()
        step_fn(ctx)
        walls.append(time.perf_counter() - begin)
        cpus.append(time.process_time() - begin_cpu)
    return walls, cpus


# ---------------------------------------------------------------------------- independent cross-checks


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mallinfo2() -> Callable[[], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        function = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2

    def in_use() -> int:
        info = function()
        return int(info.uordblks + info.hblkhd)

    return in_use


class MallocSampler(TorchDispatchMode):
    """Samples glibc's bytes in use (`mallinfo2`: uordblks + hblkhd) after every aten op, forward and backward."""

    def __init__(self, in_use: Callable[[], int]):
        super().__init__()
        self.in_use = in_use
        self.start = in_use()
        self.peak = self.start

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.in_use())
        return out


# ============================================================================ validation on toy cases


def validate_measurement() -> dict[str, Any]:
    """Known-answer checks of the allocator trace."""
    results: dict[str, Any] = {}

    # 1. A pure allocation pattern: a (4,000 B) + b (8,000 B) alive together, then b + c (2,000 B): peak 12,000 B.
    def pattern(ctx: StepContext) -> None:
        a = torch.empty(1000, dtype=torch.float32)
        b = torch.empty(2000, dtype=torch.float32)
        del a
        c = torch.empty(500, dtype=torch.float32)
        del b, c

    trace = traced_step(pattern)
    results["allocation_pattern"] = {
        "expected_peak_bytes": 12000,
        "measured_peak_bytes": trace["step_peak_bytes"],
        "residual_bytes": trace["residual_bytes"],
        "ok": trace["step_peak_bytes"] == 12000 and trace["residual_bytes"] == 0,
    }

    # 2. One training step of a single nn.Linear (sizes chosen so that every tensor has a distinct byte size).
    torch.manual_seed(0)
    batch, d_in, d_out = 96, 1000, 300
    layer = nn.Linear(d_in, d_out)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.01, momentum=0.9)
    _init_momentum(optimizer)
    x = torch.randn(batch, d_in)
    target = torch.randn(batch, d_out)
    b = 4
    sizes = {
        "x": batch * d_in * b,
        "W": d_out * d_in * b,
        "bias": d_out * b,
        "y": batch * d_out * b,
    }
    persistent = 2 * (sizes["W"] + sizes["bias"]) + sizes["x"] + sizes["y"]  # weights, momentum, x, target

    def linear_step(ctx: StepContext) -> None:
        with ctx.phase("forward"):
            loss = F.mse_loss(layer(x), target)
        with ctx.phase("backward"):
            loss.backward()
        ctx.capture_grads(layer.parameters())
        with ctx.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    trace = traced_step(linear_step)
    # Known answer, from the op sequence. Forward: y = x W^T + b (y bytes, saved for MseLossBackward); mse_loss
    # allocates the elementwise loss (y bytes) and returns the mean as a 0-d tensor that *shares that buffer*, plus a
    # y-sized temporary freed before it returns. Backward: the 4-byte seed gradient, grad_y (y bytes); MseLossBackward
    # releases y; AddmmBackward writes grad_W (W bytes, kept as `.grad`) and grad_bias (bias bytes). Peak, right after
    # grad_bias is allocated: loss buffer + grad_y + grad_W + grad_bias + seed.
    expected_grads = sizes["W"] + sizes["bias"]
    expected_peak = 2 * sizes["y"] + expected_grads + 4
    results["linear_training_step"] = {
        "shapes": {"batch": batch, "in_features": d_in, "out_features": d_out},
        "known_sizes_bytes": sizes,
        "persistent_at_start_bytes": persistent,
        "expected_grad_bytes": expected_grads,
        "measured_grad_bytes": trace["grad_bytes_allocated"],
        "expected_step_peak_bytes": expected_peak,
        "measured_step_peak_bytes": trace["step_peak_bytes"],
        "measured_grads_at_peak_bytes": trace["grads_at_peak_bytes"],
        "peak_phase": trace["peak_phase"],
        "residual_bytes": trace["residual_bytes"],
        "num_allocation_events": trace["num_allocation_events"],
    }
    results["linear_training_step"]["ok"] = (
        trace["grad_bytes_allocated"] == expected_grads
        and trace["grads_at_peak_bytes"] == expected_grads
        and trace["residual_bytes"] == 0
        and trace["step_peak_bytes"] == expected_peak
    )
    # 3. Steady state: the same step again gives the same peak.
    second = traced_step(linear_step)
    results["linear_training_step"]["second_step_peak_bytes"] = second["step_peak_bytes"]
    results["linear_training_step"]["ok"] &= second["step_peak_bytes"] == trace["step_peak_bytes"]
    return results


# ============================================================================ models and steps


def _init_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Create SGD's momentum buffers now, so that the first measured step is a steady-state step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)


def make_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(list(params), lr=0.01, momentum=0.9, weight_decay=5e-4)
    _init_momentum(optimizer)
    return optimizer


def optimizer_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def random_batch(batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """32x32 random images and labels, the same for a given batch size (memory does not depend on the values)."""
    generator = torch.Generator().manual_seed(batch_size)
    x = torch.randn(batch_size, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (batch_size,), generator=generator)
    return x, y


def build_base(depth: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    config = trgl_hf.CifarResNetConfig.from_depth(depth, num_labels=10)
    return trgl_hf.CifarResNetForImageClassification(config).train()


def build_trgl(
    depth: int, num_modules: int, policy: str, seed: int, use_transport: bool = True, aux_head: str = "conv"
) -> trgl_hf.TRGLModel:
    config = trgl_hf.TRGLConfig(
        num_modules=num_modules,
        split_policy=policy,
        tau=10.0,
        aux_head=aux_head,
        image_size=32,
        use_transport=use_transport,
    )
    return trgl_hf.TRGLModel.from_base(build_base(depth, seed), config).train()


def module_split(depth: int, num_modules: int, policy: str, seed: int) -> list[int]:
    return list(build_trgl(depth, num_modules, policy, seed).config.split)


def prefix_output(model: trgl_hf.TRGLModel, x: torch.Tensor, index: int) -> torch.Tensor:
    """Output of modules 0..index-1 (frozen, eval mode, no_grad) for `x`: module `index`'s prefix cache."""
    with torch.no_grad():
        steps = model.iter_modules(pixel_values=x, last_module=index - 1)
        hidden = None
        for module_step in steps:
            hidden = module_step.hidden_state
        return hidden


def _patch_run_block(model: trgl_hf.TRGLModel, variant: str) -> bool:
    """Replace `run_block` of this model's adapter (benchmark-only variants of the transport computation)."""
    from trgl_hf.losses import branch_energy

    adapter = model.adapter
    blocks = getattr(adapter, "blocks", None)
    if blocks is None:
        return False

    def run_block(index: int, state):
        block = blocks[index]
        if variant == "plain":
            return state.with_hidden(block(state.hidden)), []
        energies: list[torch.Tensor] = []
        handle = block.layer.register_forward_hook(
            lambda module, args, out: energies.append(branch_energy(out.clone() if variant == "copy" else out))
        )
        try:
            output = block(state.hidden)
        finally:
            handle.remove()
        return state.with_hidden(output), energies

    adapter.run_block = run_block
    return True


def resnet_blocks(base: nn.Module) -> list[nn.Module]:
    return [layer for stage in base.resnet.encoder.stages for layer in stage.layers]


def weight_bytes(model: nn.Module) -> int:
    seen: set[int] = set()
    return storage_bytes(model.parameters(), seen) + storage_bytes(model.buffers(), seen)


def param_bytes(params: Iterable[nn.Parameter]) -> int:
    return storage_bytes(params)


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: list[torch.Tensor]) -> dict[str, int]:
    """Persistent bytes at the start of a step, by category (distinct storages)."""
    seen: set[int] = set()
    weights = storage_bytes(model.parameters(), seen) + storage_bytes(model.buffers(), seen)
    optim = storage_bytes(optimizer_state(optimizer), seen)
    data = storage_bytes(inputs, seen)
    return {"weights": weights, "optimizer_state": optim, "inputs": data}


def summarise(trace: dict[str, Any], state: dict[str, int]) -> dict[str, Any]:
    persistent = state["weights"] + state["optimizer_state"] + state["inputs"]
    peak = persistent + trace["step_peak_bytes"]
    activations = trace["step_peak_bytes"] - trace["grads_at_peak_bytes"]
    return {
        "peak_bytes": peak,
        "breakdown_at_peak_bytes": {
            "weights_and_buffers": state["weights"],
            "optimizer_state": state["optimizer_state"],
            "inputs": state["inputs"],
            "gradients": trace["grads_at_peak_bytes"],
            "activations_and_temporaries": activations,
        },
        "gradients_total_bytes": trace["grad_bytes_allocated"],
        "peak_phase": trace["peak_phase"],
        "residual_bytes": trace["residual_bytes"],
        "allocation_events": trace["num_allocation_events"],
        "traced_step_s": trace["traced_step_s"],
    }


def e2e_step_fn(model: nn.Module, optimizer, x, y) -> Callable[[StepContext], None]:
    def step(ctx: StepContext) -> None:
        with ctx.phase("fwd_bwd"):
            loss = model(pixel_values=x, labels=y).loss
            loss.backward()
            del loss
        ctx.capture_grads(model.parameters())
        with ctx.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def checkpointed_step_fn(model: nn.Module, optimizer, x, y, split: list[int]) -> Callable[[StepContext], None]:
    """E2E step with `torch.utils.checkpoint` (non-reentrant) over consecutive groups of blocks.

    Segment 1 also holds the stem. As in `torch.utils.checkpoint.checkpoint_sequential`, the last segment is not
    checkpointed (it would be recomputed right away).
    """
    blocks = resnet_blocks(model)
    embedder = model.resnet.embedder
    bounds = [(sum(split[:i]), sum(split[: i + 1])) for i in range(len(split))]

    def segment(start: int, end: int, first: bool):
        def run(hidden: torch.Tensor) -> torch.Tensor:
            if first:
                hidden = embedder(hidden)
            for block in blocks[start:end]:
                hidden = block(hidden)
            return hidden

        return run

    segments = [segment(start, end, i == 0) for i, (start, end) in enumerate(bounds)]

    def step(ctx: StepContext) -> None:
        with ctx.phase("fwd_bwd"):
            hidden = x
            for i, run in enumerate(segments):
                if i < len(segments) - 1:
                    hidden = checkpoint(run, hidden, use_reentrant=False)
                else:
                    hidden = run(hidden)
            logits = model.classifier(model.resnet.pooler(hidden))
            del hidden
            loss = F.cross_entropy(logits, y)
            del logits
            loss.backward()
            del loss
        ctx.capture_grads(model.parameters())
        with ctx.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def trgl_step_fn(model: trgl_hf.TRGLModel, optimizer, x, y, cached=None) -> Callable[[StepContext], None]:
    """One TRGL step: every trainable module's loss is backpropagated as soon as it exists (the trainer's loop)."""
    params = [p for p in model.parameters() if p.requires_grad]
    inputs = {"trgl_hidden_states": cached} if cached is not None else {"pixel_values": x}

    def step(ctx: StepContext) -> None:
        with ctx.phase("fwd_bwd"):
            for module_step in model.iter_modules(labels=y, **inputs):
                if module_step.trainable:
                    module_step.loss.backward()
            del module_step
        ctx.capture_grads(params)
        with ctx.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


# ============================================================================ the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.depth = args.depth
        self.seed = 0
        self.records: list[dict[str, Any]] = []
        self.module_records: list[dict[str, Any]] = []
        self.checks: dict[str, Any] = {}
        self.diagnostics: dict[str, Any] = {}

    # ------------------------------------------------------------------ one configuration

    def measure(
        self,
        step: Callable[[StepContext], None],
        model: nn.Module,
        optimizer,
        inputs: list[torch.Tensor],
        timed: int,
    ) -> dict[str, Any]:
        state = state_bytes(model, optimizer, inputs)
        trace = traced_step(step)  # also the warm-up step: momentum buffers already exist
        summary = summarise(trace, state)
        times, cpu_times = timed_steps(step, timed) if timed > 0 else ([], [])
        summary["step_times_s"] = [round(t, 4) for t in times]
        summary["step_time_s"] = round(statistics.median(times), 4) if times else None
        summary["step_cpu_times_s"] = [round(t, 4) for t in cpu_times]
        summary["step_cpu_time_s"] = round(statistics.median(cpu_times), 4) if cpu_times else None
        summary["trace"] = trace
        return summary

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return random_batch(batch_size)

    def run_e2e(self, batch_size: int, timed: int, cross_check: bool) -> dict[str, Any]:
        x, y = self.batch(batch_size)
        model = build_base(self.depth, self.seed)
        optimizer = make_optimizer(model.parameters())
        step = e2e_step_fn(model, optimizer, x, y)
        summary = self.measure(step, model, optimizer, [x, y], timed)
        trainable = param_bytes(model.parameters())
        record = self._record(batch_size, "e2e", None, 1, None, summary, trainable)
        log(
            f"B={batch_size} e2e: peak {mib(record['peak_bytes'])} MiB, {record['step_time_s']} s/step "
            f"(CPU {record['step_cpu_time_s']} s)"
        )
        if cross_check:
            self.checks[f"e2e_batch{batch_size}"] = self._cross_check_e2e(model, optimizer, x, y, record)
        del model, optimizer, step
        gc.collect()
        return record

    def _cross_check_e2e(self, model, optimizer, x, y, record) -> dict[str, Any]:
        """Another traced E2E step (steady state: after the timed steps), with two independent measurements."""
        persistent = storage_bytes(list(model.parameters()) + list(model.buffers()) + optimizer_state(optimizer) + [x])
        param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()} | {x.untyped_storage().data_ptr()}
        saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in param_ptrs:
                saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        in_use = _mallinfo2()
        sampler: dict[str, int] = {}

        def step(ctx: StepContext) -> None:
            mode = MallocSampler(in_use) if in_use is not None else contextlib.nullcontext()
            with mode:
                with ctx.phase("forward"), saved_tensors_hooks(pack, lambda tensor: tensor):
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
        forward_live = trace["phase_peak_bytes"].get("forward")
        result = {
            "first_traced_step_peak_bytes": record["peak_bytes"],
            "steady_state_step_peak_bytes": persistent + trace["step_peak_bytes"] + storage_bytes([y]),
            "saved_tensor_hooks_bytes": sum(saved.values()),
            "profiler_forward_peak_above_start_bytes": forward_live,
            "profiler_step_peak_above_start_bytes": trace["step_peak_bytes"],
            "residual_bytes": trace["residual_bytes"],
        }
        if sampler:
            result["mallinfo2_peak_above_start_bytes"] = sampler["peak"] - sampler["start"]
        return result

    def run_checkpointed(self, batch_size: int, num_modules: int, policy: str, split: list[int], timed: int):
        x, y = self.batch(batch_size)
        model = build_base(self.depth, self.seed)
        optimizer = make_optimizer(model.parameters())
        step = checkpointed_step_fn(model, optimizer, x, y, split)
        summary = self.measure(step, model, optimizer, [x, y], timed)
        record = self._record(
            batch_size, "checkpointing", policy, num_modules, split, summary, param_bytes(model.parameters())
        )
        log(
            f"B={batch_size} checkpointing {policy} K={num_modules}: peak {mib(record['peak_bytes'])} MiB, "
            f"{record['step_time_s']} s/step"
        )
        del model, optimizer, step
        gc.collect()
        return record

    def run_trgl(
        self,
        batch_size: int,
        num_modules: int,
        policy: str,
        *,
        parallel_timed: int,
        sequential_timed: int,
        multilap: bool,
        modes: tuple[str, ...] = ("sequential", "parallel"),
    ) -> list[dict[str, Any]]:
        x, y = self.batch(batch_size)
        model = build_trgl(self.depth, num_modules, policy, self.seed)
        split = list(model.config.split)
        weights = weight_bytes(model)
        clone_bytes = self._transport_clone_bytes(model, batch_size)
        records = []
        per_module: list[dict[str, Any]] = []
        if "sequential" in modes:
            per_module = self._sequential(model, x, y, sequential_timed, lap=1)
            for entry in per_module:
                entry["transport_clone_bytes"] = clone_bytes[entry["module"] - 1]
            laps = [per_module]
            if multilap:
                laps.append(self._sequential(model, x, y, 0, lap=2, with_uncached=False))
            for lap_index, lap in enumerate(laps, start=1):
                for entry in lap:
                    self.module_records.append(
                        {"batch_size": batch_size, "policy": policy, "K": num_modules, "lap": lap_index, **entry}
                    )
            for cached in (True, False):
                key = "cached" if cached else "uncached"
                peaks = [entry[key]["peak_bytes"] for entry in per_module]
                worst = max(range(num_modules), key=lambda k: peaks[k])
                summary = dict(per_module[worst][key])
                summary["peak_module"] = worst + 1
                for field in ("step_time_s", "step_cpu_time_s"):
                    times = [entry[key][field] for entry in per_module]
                    known = all(t is not None for t in times)
                    summary[field] = round(statistics.mean(times), 4) if known else None
                    total = round(sum(times), 4) if known else None
                    summary[field[: -len("_s")] + "_sum_over_modules_s"] = total
                    summary[field[: -len("_s")] + "_per_module_s"] = times
                floor = max(self._module_floor(weights, entry, cached, x, y) for entry in per_module)
                record = self._record(
                    batch_size,
                    "sequential" if cached else "sequential_no_cache",
                    policy,
                    num_modules,
                    split,
                    summary,
                    max(entry["trainable_bytes"] for entry in per_module),
                    floor_bytes=floor,
                )
                records.append(record)
                log(
                    f"B={batch_size} {record['mode']} {policy} K={num_modules}: peak {mib(record['peak_bytes'])} MiB "
                    f"(module {worst + 1}), floor x{record['ratio_to_floor']}, {record['step_time_s']} s/module-step"
                )
            if multilap:
                peaks = [entry["cached"]["peak_bytes"] for entry in laps[1]]
                worst = max(range(num_modules), key=lambda k: peaks[k])
                summary = dict(laps[1][worst]["cached"])
                summary["peak_module"] = worst + 1
                summary["step_time_s"] = summary["step_cpu_time_s"] = None
                summary["note"] = "lap 2 of multi-lap sequential training (fresh optimizer per module, cache rebuilt)"
                floor = max(self._module_floor(weights, entry, True, x, y) for entry in per_module)
                record = self._record(
                    batch_size,
                    "multilap",
                    policy,
                    num_modules,
                    split,
                    summary,
                    max(entry["trainable_bytes"] for entry in laps[1]),
                    floor_bytes=floor,
                )
                records.append(record)
                log(f"B={batch_size} multilap {policy} K={num_modules}: peak {mib(record['peak_bytes'])} MiB")
        if "parallel" in modes:
            model.set_trainable_modules(range(num_modules))
            model.cached_input_module = None
            model.train()
            optimizer = make_optimizer(p for p in model.parameters() if p.requires_grad)
            step = trgl_step_fn(model, optimizer, x, y)
            summary = self.measure(step, model, optimizer, [x, y], parallel_timed)
            trainable = param_bytes(p for p in model.parameters() if p.requires_grad)
            floor = None
            if per_module:
                labels = storage_bytes([y])
                floor = (
                    weights
                    + 2 * trainable
                    + storage_bytes([x])
                    + labels
                    + max(
                        entry["activation_bytes"] + (entry["input_bytes"] if entry["module"] > 1 else 0)
                        for entry in per_module
                    )
                )
            record = self._record(
                batch_size, "parallel", policy, num_modules, split, summary, trainable, floor_bytes=floor
            )
            records.append(record)
            log(
                f"B={batch_size} parallel {policy} K={num_modules}: peak {mib(record['peak_bytes'])} MiB, "
                f"floor x{record['ratio_to_floor']}, {record['step_time_s']} s/step"
            )
            del optimizer, step
        del model
        gc.collect()
        return records

    def _module_floor(self, weights: int, entry: dict[str, Any], cached: bool, x, y) -> int:
        """Weights (all modules) + gradients and optimizer state of module k + its inputs + its activations."""
        data = storage_bytes([y]) + entry["input_bytes"]
        if not cached and entry["module"] > 1:
            data += storage_bytes([x])
        return weights + 2 * entry["trainable_bytes"] + data + entry["activation_bytes"]

    def _sequential(self, model, x, y, timed: int, lap: int, with_uncached: bool = True) -> list[dict[str, Any]]:
        """Train each module k alone (frozen prefix), with the prefix cache and without it."""
        entries = []
        for index in range(model.num_modules):
            model.set_trainable_modules([index])
            model.train()
            params = list(model.module_parameters(index))
            optimizer = make_optimizer(params)
            trainable = param_bytes(params)
            entry: dict[str, Any] = {
                "module": index + 1,
                "blocks": model.config.split[index],
                "trainable_bytes": trainable,
            }
            # The prefix cache: module k-1's output for this batch, computed once under no_grad (frozen prefix).
            if index == 0:
                cached, model.cached_input_module = None, None
                module_input = x
            else:
                cached = prefix_output(model, x, index)
                model.cached_input_module = index
                module_input = cached
            entry["input_bytes"] = storage_bytes([module_input])
            timed_here = (
                timed if timed == 0 else max(timed, math.ceil(self.args.min_sequential_samples / model.num_modules))
            )
            step = trgl_step_fn(model, optimizer, x, y, cached=cached)
            inputs = [x, y] if cached is None else [cached, y]
            summary = self.measure(step, model, optimizer, inputs, timed_here)
            entry["activation_bytes"] = summary["trace"]["phase_nongrad_peak_bytes"]["fwd_bwd"]
            entry["cached"] = _strip(summary)
            if with_uncached:
                if index == 0:
                    entry["uncached"] = dict(entry["cached"])
                else:
                    model.cached_input_module = None
                    step = trgl_step_fn(model, optimizer, x, y)
                    entry["uncached"] = _strip(self.measure(step, model, optimizer, [x, y], timed_here))
            entries.append(entry)
            log(
                f"  lap {lap} module {index + 1}/{model.num_modules}: cached peak {mib(entry['cached']['peak_bytes'])}"
                f" MiB, {entry['cached']['step_time_s']} s"
                + (
                    f"; uncached peak {mib(entry['uncached']['peak_bytes'])} MiB, {entry['uncached']['step_time_s']} s"
                    if with_uncached
                    else ""
                )
            )
            model.cached_input_module = None
            del optimizer, step, cached, module_input
            gc.collect()
        return entries

    def transport_diagnostic(self, batch_size: int, num_modules: int, policy: str) -> dict[str, Any] | None:
        """The step of the module that sets the sequential peak, in four variants of the transport term.

        `trgl`: as shipped (tau = 10: the energy fused with each branch's last batch norm, the branch recomputed in
        backward); `vangl_use_transport_false`: the library's VanGL (`use_transport=False`); `energy_of_branch_copy`:
        autograd's plain mean(copy of r) ** 2, which keeps the copy for backward (the library before the fusion);
        `energy_without_clone`: the same on the branch output itself (valid for the CIFAR ResNet, whose residual add
        is out of place); `no_energy`: the blocks run without any energy computation (plain greedy module). The last
        three patch `run_block` of that model's adapter inside this benchmark only.
        """
        record = find(self.records, mode="sequential", split_policy=policy, K=num_modules, batch_size=batch_size)
        e2e = find(self.records, mode="e2e", batch_size=batch_size)
        if record is None:
            return None
        index = record["peak_module"] - 1
        x, y = self.batch(batch_size)
        result: dict[str, Any] = {
            "batch_size": batch_size,
            "K": num_modules,
            "split_policy": policy,
            "module": index + 1,
        }
        variants = (
            ("trgl", True, None),
            ("vangl_use_transport_false", False, None),
            ("energy_of_branch_copy", True, "copy"),
            ("energy_without_clone", True, "no_clone"),
            ("no_energy", True, "plain"),
        )
        for key, use_transport, patch in variants:
            model = build_trgl(self.depth, num_modules, policy, self.seed, use_transport=use_transport)
            if patch is not None and not _patch_run_block(model, patch):
                result[key] = None
                continue
            model.set_trainable_modules([index])
            model.train()
            optimizer = make_optimizer(model.module_parameters(index))
            cached = None
            if index > 0:
                cached = prefix_output(model, x, index)
                model.cached_input_module = index
            step = trgl_step_fn(model, optimizer, x, y, cached=cached)
            summary = self.measure(step, model, optimizer, [x, y] if cached is None else [cached, y], 0)
            result[key] = {
                "peak_bytes": summary["peak_bytes"],
                "activation_bytes": summary["trace"]["phase_nongrad_peak_bytes"]["fwd_bwd"],
                "ratio_to_e2e": round(summary["peak_bytes"] / e2e["peak_bytes"], 3) if e2e else None,
            }
            log(
                f"transport diagnostic {policy} K={num_modules} module {index + 1} {key}: "
                f"{mib(summary['peak_bytes'])} MiB"
            )
            del model, optimizer, step, cached
            gc.collect()
        if result.get("no_energy"):
            result["transport_term_bytes"] = result["trgl"]["peak_bytes"] - result["no_energy"]["peak_bytes"]
        self.diagnostics[f"transport_term_sequential_{policy}_K{num_modules}_batch{batch_size}"] = result
        return result

    def interleaved_timing(self, batch_size: int, ks: list[int], rounds: int) -> dict[str, Any]:
        """E2E, checkpointing and TRGL parallel (equal split; the paper's conv heads and linear heads) timed in
        interleaved rounds, so that a change of the machine's load during the run hits every configuration alike.
        Ratios: per round, to that round's E2E step."""
        x, y = self.batch(batch_size)
        num_blocks = len(resnet_blocks(build_base(self.depth, self.seed)))
        configs: list[tuple[str, Callable[[StepContext], None]]] = []
        keep: list[Any] = []
        base = build_base(self.depth, self.seed)
        optimizer = make_optimizer(base.parameters())
        keep += [base, optimizer]
        configs.append(("e2e", e2e_step_fn(base, optimizer, x, y)))
        for k in ks:
            model = build_base(self.depth, self.seed)
            optimizer = make_optimizer(model.parameters())
            keep += [model, optimizer]
            configs.append(
                (f"checkpointing_equal_K{k}", checkpointed_step_fn(model, optimizer, x, y, equal_split(num_blocks, k)))
            )
            for head, name in (("conv", f"parallel_equal_K{k}"), ("linear", f"parallel_linear_head_equal_K{k}")):
                trgl = build_trgl(self.depth, k, "equal", self.seed, aux_head=head)
                optimizer = make_optimizer(trgl.parameters())
                keep += [trgl, optimizer]
                configs.append((name, trgl_step_fn(trgl, optimizer, x, y)))
        timed_steps(configs[0][1], 1)  # warm-up (every configuration has the same shapes)
        times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name, _ in configs}
        ratios: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name, _ in configs}
        for round_index in range(rounds):
            order = configs[round_index % len(configs) :] + configs[: round_index % len(configs)]
            this_round = {}
            for name, step in order:
                walls, cpus = timed_steps(step, 1)
                times[name]["wall"].append(walls[0])
                times[name]["cpu"].append(cpus[0])
                this_round[name] = (walls[0], cpus[0])
            for name in this_round:
                ratios[name]["wall"].append(this_round[name][0] / this_round["e2e"][0])
                ratios[name]["cpu"].append(this_round[name][1] / this_round["e2e"][1])
            log(
                f"interleaved timing round {round_index + 1}/{rounds}: "
                + ", ".join(f"{name} {cpu:.2f}s CPU" for name, (_, cpu) in this_round.items())
            )
        result = {
            "batch_size": batch_size,
            "rounds": rounds,
            "order": "rotated each round",
            "configs": {
                name: {
                    "wall_s": [round(t, 3) for t in times[name]["wall"]],
                    "cpu_s": [round(t, 3) for t in times[name]["cpu"]],
                    "median_cpu_s": round(statistics.median(times[name]["cpu"]), 3),
                    "median_wall_s": round(statistics.median(times[name]["wall"]), 3),
                    "median_cpu_ratio_to_e2e": round(statistics.median(ratios[name]["cpu"]), 3),
                    "median_wall_ratio_to_e2e": round(statistics.median(ratios[name]["wall"]), 3),
                }
                for name, _ in configs
            },
        }
        self.diagnostics[f"interleaved_timing_batch{batch_size}"] = result
        del keep, configs
        gc.collect()
        return result

    @staticmethod
    def _transport_clone_bytes(model: trgl_hf.TRGLModel, batch_size: int) -> list[int]:
        """Bytes per module of the residual-branch outputs (what a plain autograd energy would keep for backward)."""
        numels: dict[int, int] = {}
        blocks = list(model.adapter.blocks)
        handles = [
            block.layer.register_forward_hook(lambda module, args, out, i=i: numels.__setitem__(i, out[0].numel()))
            for i, block in enumerate(blocks)
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

    def _record(self, batch_size, mode, policy, num_modules, split, summary, trainable_bytes, floor_bytes=None):
        record = {
            "batch_size": batch_size,
            "mode": mode,
            "split_policy": policy,
            "K": num_modules,
            "split": split,
            **{k: v for k, v in summary.items() if k != "trace"},
            "trainable_param_bytes": trainable_bytes,
            "floor_bytes": floor_bytes,
        }
        record["ratio_to_floor"] = round(record["peak_bytes"] / floor_bytes, 3) if floor_bytes else None
        self.records.append(record)
        return record


def _strip(summary: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in summary.items() if k != "trace"}
    out["activation_nongrad_peak_bytes"] = summary["trace"]["phase_nongrad_peak_bytes"].get("fwd_bwd")
    return out


# ============================================================================ report


def add_ratios(records: list[dict[str, Any]]) -> None:
    e2e = {r["batch_size"]: r for r in records if r["mode"] == "e2e"}
    for record in records:
        base = e2e.get(record["batch_size"])
        if base is None:
            continue
        record["ratio_to_e2e"] = round(record["peak_bytes"] / base["peak_bytes"], 3)
        for field, ratio in (("step_time_s", "time_ratio_to_e2e"), ("step_cpu_time_s", "cpu_time_ratio_to_e2e")):
            if record.get(field) and base.get(field):
                record[ratio] = round(record[field] / base[field], 3)
            else:
                record[ratio] = None


def find(records, **keys):
    for record in records:
        if all(record.get(k) == v for k, v in keys.items()):
            return record
    return None


def _ratio_target_value(record: dict[str, Any], limit: float, e2e_peak: int | None) -> str:
    text = f"{record['ratio_to_e2e']:.3f}x ({mib(record['peak_bytes'])} MiB)"
    if e2e_peak and record["peak_bytes"] > limit * e2e_peak:
        over = record["peak_bytes"] - limit * e2e_peak
        text += f"; missed by {mib(over)} MiB (+{100 * over / (limit * e2e_peak):.0f} % over {limit}x = "
        text += f"{mib(limit * e2e_peak)} MiB)"
    elif e2e_peak:
        text += f"; limit {mib(limit * e2e_peak)} MiB"
    return text


def interleaved_head(config_name: str) -> str:
    return "linear heads" if "linear_head" in config_name else "conv heads"


def evaluate_targets(
    records: list[dict[str, Any]], main_batch: int, ks: list[int], diagnostics: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    targets = []
    interleaved = (diagnostics or {}).get(f"interleaved_timing_batch{main_batch}", {}).get("configs", {})
    for name, timing in interleaved.items():
        if name.startswith("parallel_"):
            ratio = timing["median_cpu_ratio_to_e2e"]
            targets.append(
                {
                    "target": f"parallel equal K={name.rsplit('K', 1)[1]} ({interleaved_head(name)}) <= 1.15x E2E "
                    "CPU time per step (interleaved check)",
                    "met": ratio <= 1.15,
                    "value": f"{ratio}x (median of {len(timing['cpu_s'])} rounds)",
                }
            )
    e2e_record = find(records, mode="e2e", batch_size=main_batch)
    e2e_peak = e2e_record["peak_bytes"] if e2e_record else None
    trgl_modes = ("parallel", "sequential", "sequential_no_cache", "multilap")
    trgl = [r for r in records if r["mode"] in trgl_modes and r.get("ratio_to_floor") is not None]
    if trgl:
        worst = max(trgl, key=lambda r: r["ratio_to_floor"])
        over = [r for r in trgl if r["ratio_to_floor"] > 1.25]
        targets.append(
            {
                "target": "every TRGL configuration within 1.25x of its floor",
                "met": not over,
                "value": f"max {worst['ratio_to_floor']:.3f}x ({worst['mode']}, {worst['split_policy']}, "
                f"K={worst['K']}, batch {worst['batch_size']}); {len(over)} of {len(trgl)} above 1.25x",
            }
        )
    for mode in ("sequential", "sequential_no_cache"):
        record = find(records, mode=mode, split_policy="balanced", K=4, batch_size=main_batch)
        if record:
            targets.append(
                {
                    "target": f"{mode.replace('_', ' ')} K=4 balanced <= 0.35x E2E (batch {main_batch})",
                    "met": record["ratio_to_e2e"] <= 0.35,
                    "value": _ratio_target_value(record, 0.35, e2e_peak),
                }
            )
    for policy in ("equal", "balanced"):
        record = find(records, mode="parallel", split_policy=policy, K=16, batch_size=main_batch)
        if record:
            targets.append(
                {
                    "target": f"parallel K=16 {policy} <= 0.25x E2E (batch {main_batch})",
                    "met": record["ratio_to_e2e"] <= 0.25,
                    "value": _ratio_target_value(record, 0.25, e2e_peak),
                }
            )
    for k in ks:
        for policy, ck_policy in (("equal", "equal"), ("balanced", "balanced"), ("balanced", "equal")):
            par = find(records, mode="parallel", split_policy=policy, K=k, batch_size=main_batch)
            ckpt = find(records, mode="checkpointing", split_policy=ck_policy, K=k, batch_size=main_batch)
            if not (par and ckpt):
                continue
            memory_ok = par["peak_bytes"] <= ckpt["peak_bytes"]
            speed_ok = (
                par.get("step_cpu_time_s") is not None
                and ckpt.get("step_cpu_time_s") is not None
                and par["step_cpu_time_s"] < ckpt["step_cpu_time_s"]
            )
            speed_note = ""
            par_i, ckpt_i = (
                interleaved.get(f"parallel_{policy}_K{k}"),
                interleaved.get(f"checkpointing_{ck_policy}_K{k}"),
            )
            if par_i and ckpt_i:
                speed_ok = par_i["median_cpu_ratio_to_e2e"] < ckpt_i["median_cpu_ratio_to_e2e"]
                speed_note = (
                    f"; interleaved check: {par_i['median_cpu_ratio_to_e2e']}x vs "
                    f"{ckpt_i['median_cpu_ratio_to_e2e']}x E2E CPU time (used for the verdict)"
                )
            targets.append(
                {
                    "target": f"parallel {policy} K={k} <= memory of checkpointing ({ck_policy} segments) and "
                    "faster per step",
                    "met": memory_ok and speed_ok,
                    "value": f"memory {mib(par['peak_bytes'])} vs {mib(ckpt['peak_bytes'])} MiB "
                    f"({'ok' if memory_ok else 'more'}); CPU time {par.get('step_cpu_time_s')} vs "
                    f"{ckpt.get('step_cpu_time_s')} s/step ({'faster' if speed_ok else 'not faster'}; wall "
                    f"{par.get('step_time_s')} vs {ckpt.get('step_time_s')} s){speed_note}",
                }
            )
    return targets


def fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


MODE_LABEL = {
    "e2e": "E2E",
    "checkpointing": "E2E + checkpointing",
    "parallel": "TRGL parallel",
    "sequential": "TRGL sequential (cache)",
    "sequential_no_cache": "TRGL sequential (no cache)",
    "multilap": "TRGL multi-lap (lap 2)",
}
MODE_ORDER = list(MODE_LABEL)


def markdown_table(records: list[dict[str, Any]], batch_size: int) -> str:
    rows = [r for r in records if r["batch_size"] == batch_size]
    rows.sort(key=lambda r: (MODE_ORDER.index(r["mode"]), r["split_policy"] or "", r["K"]))
    lines = [
        "| mode | split | K | blocks per module | peak MiB | x E2E | floor MiB | x floor | activations MiB | "
        "grads MiB | peak at | CPU s/step | CPU x E2E | wall s/step | wall x E2E |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        breakdown = r["breakdown_at_peak_bytes"]
        where = r.get("peak_phase") or ""
        if r.get("peak_module"):
            where = f"module {r['peak_module']} {where}"
        split = "–" if r["split"] is None else ",".join(str(s) for s in r["split"])
        lines.append(
            f"| {MODE_LABEL[r['mode']]} | {r['split_policy'] or '–'} | {r['K'] if r['mode'] != 'e2e' else '–'} | "
            f"{split} | {fmt(mib(r['peak_bytes']), 1)} | {fmt(r.get('ratio_to_e2e'), 3)} | "
            f"{fmt(mib(r['floor_bytes']), 1)} | {fmt(r['ratio_to_floor'], 3)} | "
            f"{fmt(mib(breakdown['activations_and_temporaries']), 1)} | {fmt(mib(breakdown['gradients']), 2)} | "
            f"{where.strip()} | {fmt(r.get('step_cpu_time_s'), 2)} | {fmt(r.get('cpu_time_ratio_to_e2e'), 2)} | "
            f"{fmt(r.get('step_time_s'), 2)} | {fmt(r.get('time_ratio_to_e2e'), 2)} |"
        )
    return "\n".join(lines)


def module_table(module_records: list[dict[str, Any]], batch_size: int, policy: str, k: int) -> str:
    rows = [
        m
        for m in module_records
        if m["batch_size"] == batch_size and m["policy"] == policy and m["K"] == k and m["lap"] == 1
    ]
    if not rows:
        return ""
    lines = [
        "| module | blocks | input MiB | activations MiB (isolated fwd+bwd) | branch outputs MiB (not kept) | "
        "peak MiB (cache) | peak MiB (no cache) | CPU s/step (cache) | CPU s/step (no cache) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in rows:
        lines.append(
            f"| {m['module']} | {m['blocks']} | {fmt(mib(m['input_bytes']), 1)} | "
            f"{fmt(mib(m['activation_bytes']), 1)} "
            f"| {fmt(mib(m.get('transport_clone_bytes')), 1)} | {fmt(mib(m['cached']['peak_bytes']), 1)} | "
            f"{fmt(mib(m['uncached']['peak_bytes']), 1)} | {fmt(m['cached']['step_cpu_time_s'], 3)} | "
            f"{fmt(m['uncached']['step_cpu_time_s'], 3)} |"
        )
    return "\n".join(lines)


def write_plot(records: list[dict[str, Any]], batch_size: int, path: Path, depth: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    styles = {
        ("checkpointing", "equal"): ("tab:gray", "s", "--"),
        ("checkpointing", "balanced"): ("tab:gray", "s", ":"),
        ("parallel", "equal"): ("tab:blue", "o", "--"),
        ("parallel", "balanced"): ("tab:blue", "o", "-"),
        ("sequential", "equal"): ("tab:green", "^", "--"),
        ("sequential", "balanced"): ("tab:green", "^", "-"),
        ("sequential_no_cache", "equal"): ("tab:olive", "v", "--"),
        ("sequential_no_cache", "balanced"): ("tab:olive", "v", "-"),
        ("multilap", "equal"): ("tab:red", "x", "none"),
        ("multilap", "balanced"): ("tab:red", "x", "none"),
    }
    for (mode, policy), (color, marker, linestyle) in styles.items():
        rows = sorted(
            (
                r
                for r in records
                if r["batch_size"] == batch_size and r["mode"] == mode and r["split_policy"] == policy
            ),
            key=lambda r: r["K"],
        )
        if not rows:
            continue
        ax.plot(
            [r["K"] for r in rows],
            [r["ratio_to_e2e"] for r in rows],
            color=color,
            marker=marker,
            linestyle=linestyle,
            markersize=8 if mode == "multilap" else 6,
            label=f"{MODE_LABEL[mode]}, {policy}",
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.text(2, 1.01, "E2E", va="bottom", fontsize=8)
    ax.plot([4], [0.35], marker="_", color="tab:green", markersize=22, markeredgewidth=2)
    ax.annotate("target seq. K=4 ≤ 0.35", (4, 0.35), textcoords="offset points", xytext=(8, 4), fontsize=8)
    ax.plot([16], [0.25], marker="_", color="tab:blue", markersize=22, markeredgewidth=2)
    ax.annotate("target par. K=16 ≤ 0.25", (16, 0.25), textcoords="offset points", xytext=(-120, 6), fontsize=8)
    ax.set_xscale("log", base=2)
    ks = sorted({r["K"] for r in records if r["mode"] != "e2e"})
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_ylim(0, None)
    ax.set_xlabel("K (modules / checkpoint segments)")
    ax.set_ylabel("peak training memory / end-to-end")
    ax.set_title(f"CIFAR ResNet-{depth}, batch {batch_size}, SGD momentum, CPU allocator trace")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def environment() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    import transformers

    dirty = None
    with contextlib.suppress(Exception):
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "trgl_hf"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.split("\n")
        dirty = [line.strip() for line in dirty if line.strip()]
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_uncommitted_trgl_hf": dirty,
        "load_average_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trgl_hf": getattr(trgl_hf, "__version__", None),
        "git_commit": commit,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def analysis_notes(result: dict[str, Any]) -> list[str]:
    """Explanations computed from the measured numbers (rendered under the targets)."""
    records, modules = result["records"], result["module_records"]
    settings = result["settings"]
    main_batch = settings["batch_sizes"][0]
    notes: list[str] = []
    e2e = find(records, mode="e2e", batch_size=main_batch)
    if e2e is None:
        return notes
    e2e_act = e2e["breakdown_at_peak_bytes"]["activations_and_temporaries"]
    trgl = [r for r in records if r.get("ratio_to_floor") is not None]
    if trgl:
        worst = max(trgl, key=lambda r: r["ratio_to_floor"])
        notes.append(
            f"Floors: every TRGL configuration is within {worst['ratio_to_floor']:.3f}x of its floor. The floor is "
            "built "
            "from each module's *measured* activations (with its head and transport term), so this checks the "
            "orchestration (per-module backward in parallel mode, prefix recompute, optimizer), not how lean a "
            "module's activations are; the ratios to E2E and the transport-term measurement below show that part."
        )
    for name, diag in result.get("diagnostics", {}).items():
        if not name.startswith("transport_term") or not diag.get("no_energy"):
            continue
        entry = next(
            (
                m
                for m in modules
                if m["batch_size"] == diag["batch_size"]
                and m["policy"] == diag["split_policy"]
                and m["K"] == diag["K"]
                and m["lap"] == 1
                and m["module"] == diag["module"]
            ),
            None,
        )
        shipped, plain = diag["trgl"], diag["no_energy"]
        no_clone, vangl = diag.get("energy_without_clone"), diag.get("vangl_use_transport_false")
        copied = diag.get("energy_of_branch_copy")
        perfect = (e2e["peak_bytes"] - e2e_act + e2e_act / diag["K"]) / e2e["peak_bytes"]
        text = (
            f"Sequential, {diag['split_policy']} split, K = {diag['K']}: the run peaks at module {diag['module']}"
            + (f" ({entry['blocks']} blocks)" if entry else "")
            + f" at {shipped['ratio_to_e2e']}x E2E. Without any energy computation the same module peaks at "
            f"{plain['ratio_to_e2e']}x: the transport term costs {mib(shipped['peak_bytes'] - plain['peak_bytes'])} "
            "MiB. The backward of mean(r ** 2) needs every residual-branch output r, which a plain block does not "
            "keep (its add saves nothing); the library fuses the energy with the branch's last batch norm "
            "(`trgl_hf.losses.BatchNormBranchEnergy`), which recomputes r from the normalization's input (saved by "
            "the normalization anyway) during backward, one block at a time."
        )
        if copied:
            text += (
                " A plain autograd energy keeps one branch-sized tensor per block"
                + (f" ({mib(entry['transport_clone_bytes'])} MiB for this module)" if entry else "")
                + f": {copied['ratio_to_e2e']}x on a copy of r (the library before the fusion)"
                + (f", {no_clone['ratio_to_e2e']}x on r itself" if no_clone else "")
                + "."
            )
        if vangl:
            text += (
                f" The library's VanGL (`use_transport=False`) peaks at {vangl['ratio_to_e2e']}x: it computes the "
                "energies for logging without a graph."
            )
        text += (
            f" For scale: a perfect {diag['K']}-way split of E2E's activations (no head, no transport term) would "
            f"be {perfect:.3f}x E2E; the coarse blocks of stage 1 and the conv head at the module's resolution add "
            "to it."
        )
        notes.append(text)
    for name, timing in result.get("diagnostics", {}).items():
        if not name.startswith("interleaved_timing"):
            continue
        configs = timing["configs"]
        parts = []
        for key in configs:
            if key.startswith("parallel_"):
                k = key.rsplit("K", 1)[1]
                ckpt = configs.get(f"checkpointing_equal_K{k}")
                if ckpt:
                    wins = sum(p < c for p, c in zip(configs[key]["cpu_s"], ckpt["cpu_s"]))
                    parts.append(
                        f"K={k}: parallel ({interleaved_head(key)}) {configs[key]['median_cpu_ratio_to_e2e']}x vs "
                        "checkpointing "
                        f"{ckpt['median_cpu_ratio_to_e2e']}x E2E CPU time, parallel faster in {wins} of "
                        f"{len(ckpt['cpu_s'])} rounds"
                    )
        if parts:
            notes.append(
                "Speed, interleaved check (the most reliable timing here): " + "; ".join(parts) + ". Checkpointing "
                "recomputes the forward of K-1 segments; TRGL parallel adds K heads and transport terms but no "
                "recomputation."
                + (
                    " Linear heads (global pooling + a linear layer) are the cheaper alternative to the paper's conv "
                    "heads."
                    if any("linear_head" in key for key in configs)
                    else ""
                )
            )
    comparisons = [
        t for t in result["targets"] if t["target"].startswith("parallel") and "checkpointing" in t["target"]
    ]
    if comparisons:
        pairs = []
        for policy in settings["policies"]:
            for k in settings["ks"]:
                par = find(records, mode="parallel", split_policy=policy, K=k, batch_size=main_batch)
                ckpt = find(records, mode="checkpointing", split_policy=policy, K=k, batch_size=main_batch)
                if par and ckpt:
                    pairs.append((policy, k, par, ckpt))
        less = [p for p in pairs if p[2]["peak_bytes"] <= p[3]["peak_bytes"]]
        faster = [
            p
            for p in pairs
            if p[2].get("step_cpu_time_s")
            and p[3].get("step_cpu_time_s")
            and p[2]["step_cpu_time_s"] < p[3]["step_cpu_time_s"]
        ]
        detail = "; ".join(
            f"{policy} K={k}: {p['ratio_to_e2e']}x vs {c['ratio_to_e2e']}x memory, "
            f"{fmt(p.get('cpu_time_ratio_to_e2e'))}x vs {fmt(c.get('cpu_time_ratio_to_e2e'))}x CPU time"
            for policy, k, p, c in pairs
        )
        notes.append(
            f"Parallel vs checkpointing with the same K segments (same blocks per segment as the TRGL split): "
            f"parallel uses no more memory in {len(less)} of {len(pairs)} cases and is faster in {len(faster)} of "
            f"{len(pairs)} ({detail}). Checkpointing keeps only the K-1 segment inputs plus one segment's "
            "recomputed activations (no auxiliary head, no transport term) and pays one extra forward of K-1 "
            "segments; TRGL parallel keeps the largest module's full activations plus its conv head (a 3x3 "
            "convolution at the module's resolution) and the transport term's backward temporaries, and pays for K "
            "heads and transport terms."
        )
    deltas, extra_memory = [], []
    for m in modules:
        if m["batch_size"] != main_batch or m["lap"] != 1 or m["module"] == 1 or "uncached" not in m:
            continue
        cached, uncached = m["cached"].get("step_cpu_time_s"), m["uncached"].get("step_cpu_time_s")
        extra_memory.append(m["uncached"]["peak_bytes"] - m["cached"]["peak_bytes"])
        if cached and uncached:
            deltas.append((m["K"], m["module"], uncached / cached))
    if deltas:
        by_k = {}
        for k, _, ratio in deltas:
            by_k.setdefault(k, []).append(ratio)
        summary = ", ".join(f"K={k}: {statistics.mean(v):.2f}x" for k, v in sorted(by_k.items()))
        last = max(deltas, key=lambda d: (d[0], d[1]))
        notes.append(
            "Prefix cache: without it, each step of module k first runs the frozen modules 1..k-1 (under no_grad, "
            "in eval mode), which costs little memory (+"
            + (
                f"{mib(min(extra_memory))}"
                if min(extra_memory) == max(extra_memory)
                else f"{mib(min(extra_memory))}..{mib(max(extra_memory))}"
            )
            + " MiB at the module's peak: the image batch, "
            f"{mib(storage_bytes_of_batch(main_batch))} MiB) but time: a module step (k >= 2) takes on average "
            f"{summary} the CPU time of the cached step, up to {last[2]:.1f}x for the last module at K = {last[0]}. "
            "(The frozen modules also compute their heads' logits and losses, which are thrown away.)"
        )
    multilap = [r for r in records if r["mode"] == "multilap"]
    for r in multilap:
        seq = find(records, mode="sequential", split_policy=r["split_policy"], K=r["K"], batch_size=r["batch_size"])
        if seq:
            notes.append(
                f"Multi-lap ({r['split_policy']}, K = {r['K']}): the lap-2 peak is {mib(r['peak_bytes'])} MiB vs "
                f"{mib(seq['peak_bytes'])} MiB in lap 1 "
                f"({'identical' if r['peak_bytes'] == seq['peak_bytes'] else 'different'}), "
                "as expected by construction; the other multi-lap rows equal the sequential rows."
            )
    for batch_size in settings["batch_sizes"][1:]:
        diffs = []
        for r in records:
            if r["batch_size"] != batch_size or r["mode"] == "e2e":
                continue
            twin = find(records, mode=r["mode"], split_policy=r["split_policy"], K=r["K"], batch_size=main_batch)
            if twin and r.get("ratio_to_e2e") is not None:
                diffs.append(abs(r["ratio_to_e2e"] - twin["ratio_to_e2e"]))
        if diffs:
            notes.append(
                f"Batch {batch_size} vs {main_batch}: the ratios to E2E differ by at most {max(diffs):.3f} "
                "(activations scale with the batch; weights and optimizer state are a few MiB)."
            )
    return notes


def storage_bytes_of_batch(batch_size: int) -> int:
    return batch_size * 3 * 32 * 32 * 4


def write_outputs(result: dict[str, Any], out_dir: Path, plot: bool = True) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    result["targets"] = evaluate_targets(
        result["records"], result["settings"]["batch_sizes"][0], result["settings"]["ks"], result.get("diagnostics")
    )
    (out_dir / "memory_speed.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    settings = result["settings"]
    main_batch = settings["batch_sizes"][0]
    depth = settings["depth"]
    env = result["environment"]
    records = result["records"]
    validation = result["validation"]
    lines = [
        "# Peak training memory and time per step: E2E vs checkpointing vs TRGL",
        "",
        f"Command: `{result['command']}` — run time {result['runtime_s'] / 60:.1f} min "
        f"({env['date_utc']}, torch {env['torch']}, transformers {env['transformers']}, {env['cpu']}, "
        f"{env['torch_threads']} thread, git {str(env['git_commit'])[:10]}).",
        "",
    ]
    extra = result.get("extra_checks")
    if extra:
        lines += [
            "The transport-term variants and the interleaved timing check (which the full command runs at its end) "
            f"were added to this run's results with `{extra['command']}` — run time "
            f"{extra['runtime_s'] / 60:.1f} min ({extra['date_utc']}); memory is deterministic, so they combine "
            "exactly with the main run.",
            "",
        ]
    lines += [
        f"Model: CIFAR ResNet-{depth} (`CifarResNetForImageClassification`, "
        f"{settings['num_blocks']} residual blocks), "
        f"32x32 random inputs, 10 classes; TRGL with tau = 10 and the paper's conv auxiliary heads; "
        "SGD (lr 0.01, momentum 0.9, weight decay 5e-4) for every mode, fresh per module in sequential modes. "
        "Random values are fine here: memory does not depend on them.",
        "",
        "## How memory is measured",
        "",
        "Exactly, at the allocator level (not process RSS): one training step (forward, backward, optimizer step, "
        "`zero_grad(set_to_none=True)`) runs under `torch.profiler` with `profile_memory=True`, which records every "
        "CPU tensor allocation and free (requested bytes and address). Peak = bytes of the training state at the "
        "start of the step (weights and buffers, SGD momentum, the batch; distinct storages) + the maximum of the "
        "running sum of the step's allocations minus the frees of those allocations. Blocks alive at the "
        "addresses of the `.grad` tensors when they are read (before the optimizer step) are the gradients; "
        "activations = the rest of the step's live allocations at the peak (saved activations and temporaries). "
        "The momentum buffers are created before the traced step, so the traced step (which is also the warm-up "
        "step) is a steady-state step. The residual (bytes allocated in the step and still alive at its end) is "
        f"at most {result['max_residual_bytes']} B over all traced steps (nothing allocated by a step outlives it). "
        "Memory allocated outside PyTorch's allocator (oneDNN scratchpads, Python objects) is not counted.",
        "",
        "**Floor** of a TRGL configuration: weights of all modules (all kept in memory) + gradients and SGD momentum "
        "of what is trained + the batch + the largest module's training activations with its head, measured per "
        "module in isolation (module k trained alone on its cached input: the sequential-with-cache step; "
        "activations = its peak of non-gradient allocations during forward + backward, plus its input). Parallel: "
        "all gradients/momentum + max over k; sequential: max over k of the per-module floor (no cache: + the "
        "image batch). The sequential-with-cache step *is* the isolated measurement, so its ratio is <= 1 by "
        "construction (below 1 because not all gradients are alive at the activation peak).",
        "",
        "**Speed**: median time of the timed steps that follow the traced (warm-up) step, in the same process as "
        "E2E; sequential: the step of module k, averaged over k (the sum over k is in the JSON). Both the CPU time "
        "of the process (`time.process_time`, the primary number: one intra-op thread, so it depends much less "
        "on other processes than the wall time does) and the wall time are given; the 2 CPU cores were shared "
        "with other jobs during the run "
        f"(load average {result['environment']['load_average_at_start'][0]:.1f} at the start, "
        f"{result['environment']['load_average_at_end'][0]:.1f} at the end), which inflates and scatters the wall "
        f"times. Timed steps: E2E {settings['timed_steps']['e2e']}, checkpointing "
        f"{settings['timed_steps']['checkpointing_equal']} (equal) / "
        f"{settings['timed_steps']['checkpointing_balanced']} (balanced), parallel "
        f"{settings['timed_steps']['parallel']}, sequential "
        f"{settings['timed_steps']['sequential_per_module']} per module (at least "
        f"{settings['min_sequential_samples']} samples over the K modules).",
        "",
        "Checkpointing: `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)` over K consecutive groups of "
        "blocks (the stem in group 1, same blocks per group as the TRGL split of the same policy); like "
        "`checkpoint_sequential`, the last group is not checkpointed.",
        "",
        "## Validation of the measurement",
        "",
    ]
    pattern = validation["allocation_pattern"]
    linear = validation["linear_training_step"]
    lines += [
        f"- Allocation pattern (a = 4,000 B and b = 8,000 B alive together, then a freed and c = 2,000 B "
        f"allocated): expected peak 12,000 B, measured {pattern['measured_peak_bytes']:,} B, residual "
        f"{pattern['residual_bytes']} B — {'OK' if pattern['ok'] else 'FAILED'}.",
        f"- One SGD-momentum step of `nn.Linear({linear['shapes']['in_features']}, "
        f"{linear['shapes']['out_features']})` with MSE loss, batch {linear['shapes']['batch']} (x "
        f"{linear['known_sizes_bytes']['x']:,} B, W {linear['known_sizes_bytes']['W']:,} B, bias "
        f"{linear['known_sizes_bytes']['bias']:,} B, y {linear['known_sizes_bytes']['y']:,} B): gradient bytes "
        f"expected {linear['expected_grad_bytes']:,} (W + bias), measured {linear['measured_grad_bytes']:,}; step "
        f"peak above the persistent state expected {linear['expected_step_peak_bytes']:,} B (while AddmmBackward "
        "writes grad W and grad bias, grad_y and the loss buffer are alive: `mse_loss` returns its mean as a 0-d "
        "tensor sharing the y-sized elementwise-loss buffer; + the 4-byte seed gradient), measured "
        f"{linear['measured_step_peak_bytes']:,} B; a second step gives {linear['second_step_peak_bytes']:,} B; "
        f"residual {linear['residual_bytes']} B — {'OK' if linear['ok'] else 'FAILED'}.",
    ]
    for name, check in result["cross_checks"].items():
        lines.append(
            f"- {name}: the traced (first) step peak {mib(check['first_traced_step_peak_bytes'])} MiB vs a later "
            f"steady-state step {mib(check['steady_state_step_peak_bytes'])} MiB. Bytes alive at the end of the "
            f"forward pass (profiler) {mib(check['profiler_forward_peak_above_start_bytes'])} MiB vs tensors "
            f"saved for backward (saved-tensor hooks, distinct storages) {mib(check['saved_tensor_hooks_bytes'])} "
            "MiB; step peak above the state (profiler) "
            f"{mib(check['profiler_step_peak_above_start_bytes'])} MiB vs glibc `mallinfo2` bytes in use sampled "
            f"after every aten op {mib(check.get('mallinfo2_peak_above_start_bytes'))} MiB (includes malloc "
            "overhead and non-tensor memory, misses within-op peaks)."
        )
    lines += ["", f"## Results, batch {main_batch}", "", markdown_table(records, main_batch), ""]
    lines += [
        "Columns: *peak* = whole training step; *x floor* as defined above; *activations* and *grads* = their "
        "bytes at the moment of the peak; *peak at* = phase (and, for sequential, the module k whose step is the "
        "peak of the whole sequential run). Weights + buffers: "
        f"{mib(find(records, mode='e2e', batch_size=main_batch)['breakdown_at_peak_bytes']['weights_and_buffers'])} "
        "MiB for the base model. Sequential time = one step of module k, averaged over k. Multi-lap: every step "
        "of lap r trains one module exactly like sequential training (fresh optimizer, frozen prefix, cache), so "
        "its per-step memory is identical by construction; measured once as a check (lap 2 after lap 1).",
        "",
    ]
    for batch_size in settings["batch_sizes"][1:]:
        lines += [f"## Subset, batch {batch_size}", "", markdown_table(records, batch_size), ""]
    k_detail = 4 if 4 in settings["ks"] else settings["ks"][-1]
    detail = module_table(result["module_records"], main_batch, "balanced", k_detail)
    if detail:
        lines += [
            f"## Per module: sequential, balanced split, K = {k_detail}, batch {main_batch}",
            "",
            detail,
            "",
            "*branch outputs*: the residual-branch outputs of the module, which a plain autograd energy would keep "
            "for backward (one per block); the fused energy recomputes them in backward instead.",
            "",
        ]
    labels = {
        "trgl": "TRGL as shipped (tau = 10): energy fused with the last batch norm, branch recomputed in backward",
        "energy_of_branch_copy": "TRGL, plain autograd energy of a copy of each branch output (before the fusion)",
        "vangl_use_transport_false": "library VanGL (`use_transport=False`): energies logged without a graph",
        "vangl_no_transport_term": "library VanGL (`use_transport=False`)",
        "energy_without_clone": "TRGL, energy of the branch output itself (no copy)",
        "no_energy": "no energy computed at all (plain greedy module)",
    }
    for name, diag in result.get("diagnostics", {}).items():
        if not name.startswith("transport_term"):
            continue
        lines += [
            f"## Cost of the transport term (sequential, {diag['split_policy']}, K = {diag['K']}, module "
            f"{diag['module']}, batch {diag['batch_size']})",
            "",
            "| variant | peak MiB | x E2E | activations MiB |",
            "| --- | --- | --- | --- |",
        ]
        for key, label in labels.items():
            variant = diag.get(key)
            if variant:
                lines.append(
                    f"| {label} | {fmt(mib(variant['peak_bytes']), 1)} | {fmt(variant['ratio_to_e2e'], 3)} | "
                    f"{fmt(mib(variant['activation_bytes']), 1)} |"
                )
        lines.append("")
    for name, timing in result.get("diagnostics", {}).items():
        if not name.startswith("interleaved_timing"):
            continue
        lines += [
            f"## Interleaved timing check (batch {timing['batch_size']}, {timing['rounds']} rounds, order rotated)",
            "",
            "One step of each configuration per round, so that load changes on the shared cores hit all of them "
            "alike; ratio = median over rounds of (step time / that round's E2E step time).",
            "",
            "| configuration | CPU s/step (median) | CPU x E2E | wall s/step (median) | wall x E2E |",
            "| --- | --- | --- | --- | --- |",
        ]
        for config, values in timing["configs"].items():
            lines.append(
                f"| {config} | {fmt(values['median_cpu_s'])} | {fmt(values['median_cpu_ratio_to_e2e'], 3)} | "
                f"{fmt(values['median_wall_s'])} | {fmt(values['median_wall_ratio_to_e2e'], 3)} |"
            )
        lines.append("")
    lines += ["## Targets", "", "| target | met | numbers |", "| --- | --- | --- |"]
    for target in result["targets"]:
        lines.append(f"| {target['target']} | {'yes' if target['met'] else '**no**'} | {target['value']} |")
    lines.append("")
    notes = analysis_notes(result) + list(result.get("notes") or [])
    if notes:
        lines += ["## Why: reading the numbers", ""] + [f"- {note}" for note in notes] + [""]
    text = "\n".join(lines)
    (out_dir / "memory_speed.md").write_text(text)
    if plot:
        write_plot(records, main_batch, out_dir / "memory_speed.png", depth)
    return text


# ============================================================================ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: ResNet-20, batch 16, K in {2, 4}")
    parser.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results (quick: a temp dir)")
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="first = main table")
    parser.add_argument("--ks", type=int, nargs="+", default=None)
    parser.add_argument("--policies", nargs="+", default=["equal", "balanced"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--extra-only",
        type=Path,
        default=None,
        metavar="JSON",
        help="run only the transport-term variants and the interleaved timing, merged into an existing JSON",
    )
    parser.add_argument(
        "--render-only",
        type=Path,
        default=None,
        metavar="JSON",
        help="rewrite the Markdown and the plot from an existing memory_speed.json (no measurement)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.depth = args.depth or 20
        args.batch_sizes = args.batch_sizes or [16]
        args.ks = args.ks or [2, 4]
        args.timed = {"e2e": 1, "checkpointing_equal": 1, "checkpointing_balanced": 1, "parallel": 1}
        args.sequential_timed = 1
        args.min_sequential_samples = 2
        args.multilap = [("balanced", args.ks[-1])]
        args.timing_ks, args.timing_rounds = [4], 2
    else:
        args.depth = args.depth or 110
        args.batch_sizes = args.batch_sizes or [256, 128]
        args.ks = args.ks or [2, 4, 8, 16]
        args.timed = {"e2e": 3, "checkpointing_equal": 1, "checkpointing_balanced": 1, "parallel": 2}
        args.sequential_timed = 1
        args.min_sequential_samples = 4
        args.multilap = [("balanced", 4)]
        args.timing_ks, args.timing_rounds = [4, 16], 3
    if args.out_dir is None:
        args.out_dir = (
            Path(tempfile.mkdtemp(prefix="trgl_memory_speed_")) if args.quick else REPO_ROOT / "benchmarks" / "results"
        )
    return args


def run_extra_checks(bench: Bench, args: argparse.Namespace, main_batch: int) -> None:
    """The transport-term variants and the interleaved timing (also runnable alone with `--extra-only`)."""
    k_diag = 4 if 4 in args.ks else args.ks[-1]
    policy = "balanced" if "balanced" in args.policies else args.policies[0]
    bench.transport_diagnostic(main_batch, k_diag, policy)
    bench.interleaved_timing(main_batch, [k for k in args.timing_ks if k in args.ks], args.timing_rounds)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render_only is not None:
        result = json.loads(args.render_only.read_text())
        out_dir = (
            args.out_dir if "--out-dir" in (argv if argv is not None else sys.argv[1:]) else args.render_only.parent
        )
        print(write_outputs(result, out_dir, plot=not args.no_plot))
        return result
    if args.extra_only is not None:
        torch.set_num_threads(args.threads)
        gc.collect()
        gc.freeze()
        torch.set_flush_denormal(True)
        result = json.loads(args.extra_only.read_text())
        settings = result["settings"]
        args.depth, args.ks, args.policies = settings["depth"], settings["ks"], settings["policies"]
        bench = Bench(args)
        bench.records = result["records"]
        run_extra_checks(bench, args, settings["batch_sizes"][0])
        result.setdefault("diagnostics", {}).update(bench.diagnostics)
        command = "python benchmarks/memory_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
        result["extra_checks"] = {
            "command": command,
            "runtime_s": round(time.perf_counter() - START, 1),
            "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "load_average_at_start": LOAD_AT_START,
            "load_average_at_end": os.getloadavg(),
        }
        print(write_outputs(result, args.extra_only.parent, plot=not args.no_plot))
        return result
    torch.set_num_threads(args.threads)
    gc.collect()
    gc.freeze()  # the many long-lived objects of torch/transformers: keeps gc.collect() fast
    torch.set_flush_denormal(True)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    command = (
        "python benchmarks/memory_speed.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    log(f"{command}: depth {args.depth}, batches {args.batch_sizes}, K {args.ks}, out {args.out_dir}")

    validation = validate_measurement()
    log(f"validation: {json.dumps({k: v['ok'] for k, v in validation.items()})}")
    bench = Bench(args)
    main_batch, *other_batches = args.batch_sizes
    num_blocks = len(resnet_blocks(build_base(args.depth, 0)))

    bench.run_e2e(main_batch, args.timed["e2e"], cross_check=True)
    for policy in args.policies:
        for k in args.ks:
            bench.run_trgl(
                main_batch,
                k,
                policy,
                parallel_timed=args.timed["parallel"],
                sequential_timed=args.sequential_timed,
                multilap=(policy, k) in args.multilap,
            )
            split = equal_split(num_blocks, k) if policy == "equal" else module_split(args.depth, k, policy, 0)
            bench.run_checkpointed(main_batch, k, policy, split, args.timed[f"checkpointing_{policy}"])
    run_extra_checks(bench, args, main_batch)
    # Smaller batch: a memory-only subset (ratios hardly depend on the batch: activations scale with it).
    for batch_size in other_batches:
        bench.run_e2e(batch_size, 0, cross_check=False)
        k_subset = [k for k in (4, 16) if k in args.ks] or args.ks[-1:]
        for k in k_subset:
            bench.run_trgl(
                batch_size,
                k,
                "balanced",
                parallel_timed=0,
                sequential_timed=0,
                multilap=False,
                modes=("sequential", "parallel") if k == k_subset[0] else ("parallel",),
            )
        bench.run_checkpointed(batch_size, k_subset[0], "equal", equal_split(num_blocks, k_subset[0]), 0)
        bench.run_checkpointed(
            batch_size, k_subset[0], "balanced", module_split(args.depth, k_subset[0], "balanced", 0), 0
        )

    add_ratios(bench.records)
    targets = evaluate_targets(bench.records, main_batch, args.ks)
    runtime = time.perf_counter() - START
    residuals = [r["residual_bytes"] for r in bench.records] + [
        entry[key]["residual_bytes"]
        for entry in bench.module_records
        for key in ("cached", "uncached")
        if key in entry
    ]
    result = {
        "max_residual_bytes": max(residuals) if residuals else None,
        "command": command,
        "runtime_s": round(runtime, 1),
        "environment": {**environment(), "load_average_at_start": LOAD_AT_START},
        "settings": {
            "depth": args.depth,
            "num_blocks": num_blocks,
            "batch_sizes": args.batch_sizes,
            "ks": args.ks,
            "policies": args.policies,
            "tau": 10.0,
            "aux_head": "conv",
            "optimizer": "SGD(lr=0.01, momentum=0.9, weight_decay=5e-4), momentum buffers created before tracing",
            "timed_steps": {**args.timed, "sequential_per_module": args.sequential_timed},
            "min_sequential_samples": args.min_sequential_samples,
            "multilap_measured": args.multilap,
            "quick": args.quick,
            "bytes_unit": "MiB = 2**20 bytes in the Markdown; bytes in the JSON",
        },
        "validation": validation,
        "cross_checks": bench.checks,
        "diagnostics": bench.diagnostics,
        "records": bench.records,
        "module_records": bench.module_records,
        "targets": targets,
        "notes": [],
    }
    text = write_outputs(result, args.out_dir, plot=not args.no_plot)
    log(f"wrote {args.out_dir}")
    print(text)
    return result


if __name__ == "__main__":
    main()
