"""Exact training-memory accounting at the allocator level (shared by the memory benchmarks).

Every CPU tensor allocation and free of one training step is recorded by `torch.profiler` (`profile_memory=True`,
which hooks PyTorch's CPU allocator and reports the requested bytes and the address of each block). The peak of a
step is

    bytes of the training state alive at the start of the step (weights and buffers, optimizer state, the batch)
    + the maximum of the running sum of the step's allocations minus the frees of those allocations.

Allocations that end up as `.grad` tensors are identified by address (the blocks still alive when the gradients are
read, before the optimizer step). `validate_measurement` checks the trace on cases with a known answer; glibc's
`mallinfo2` (`MallocSampler`) and saved-tensor hooks (`SavedTensorBytes`) are independent cross-checks.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode

PHASE_PREFIX = "bench::"


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


# ---------------------------------------------------------------------------- independent cross-checks


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def mallinfo2_in_use() -> Callable[[], int] | None:
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
    init_momentum(optimizer)
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


def init_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Create SGD's momentum buffers now, so that the first measured step is a steady-state step."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)


def optimizer_state(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: list[torch.Tensor]) -> dict[str, int]:
    """Persistent bytes at the start of a step, by category (distinct storages)."""
    seen: set[int] = set()
    weights = storage_bytes(model.parameters(), seen) + storage_bytes(model.buffers(), seen)
    optim = storage_bytes(optimizer_state(optimizer), seen)
    data = storage_bytes(inputs, seen)
    return {"weights_and_buffers": weights, "optimizer_state": optim, "inputs": data}


def summarise(trace: dict[str, Any], state: dict[str, int]) -> dict[str, Any]:
    """Peak of a traced step and its breakdown at the peak."""
    return {
        "peak_bytes": sum(state.values()) + trace["step_peak_bytes"],
        "breakdown_at_peak_bytes": {
            **state,
            "gradients": trace["grads_at_peak_bytes"],
            "activations_and_temporaries": trace["step_peak_bytes"] - trace["grads_at_peak_bytes"],
        },
        "gradients_total_bytes": trace["grad_bytes_allocated"],
        "peak_phase": trace["peak_phase"],
        "phase_peak_above_state_bytes": trace["phase_peak_bytes"],
        "activation_nongrad_peak_bytes": trace["phase_nongrad_peak_bytes"].get("fwd_bwd"),
        "residual_bytes": trace["residual_bytes"],
        "untracked_frees": trace["untracked_frees"],
        "allocation_events": trace["num_allocation_events"],
        "traced_step_s": trace["traced_step_s"],
    }


def measure_step(step: Callable[[StepContext], None], model: nn.Module, optimizer, inputs, warmup: bool = False):
    """Peak of one traced step (after an untraced warm-up step when `warmup`, e.g. to create AdamW's state)."""
    if warmup:
        step(StepContext(tracing=False))
    state = state_bytes(model, optimizer, list(inputs))
    return summarise(traced_step(step), state)


class SavedTensorBytes(torch.autograd.graph.saved_tensors_hooks):
    """Bytes of the distinct non-parameter storages autograd saves for backward inside the context."""

    def __init__(self, model: nn.Module, extra: Iterable[torch.Tensor] = ()):
        skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
        skip |= {t.untyped_storage().data_ptr() for t in extra}
        self.saved: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in skip:
                self.saved[storage.data_ptr()] = storage.nbytes()
            return tensor

        super().__init__(pack, lambda tensor: tensor)

    def __enter__(self) -> SavedTensorBytes:
        super().__enter__()
        return self

    @property
    def total(self) -> int:
        return sum(self.saved.values())
