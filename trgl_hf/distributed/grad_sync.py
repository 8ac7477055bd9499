"""Gradient averaging over processes that overlaps the backward pass: bucketed, asynchronous, in place.

`TRGLTrainer` does not use DDP's reducer (each module has its own loss and backward). Instead, every trainable
parameter gets a hook that fires when its gradient is ready; the parameters are grouped into buckets (in reverse
order of registration, roughly the order in which backward produces them, never across modules) and a bucket's
all-reduce starts as soon as all its gradients are ready, while backward, or the next module, goes on computing:

- in parallel mode, module k's buckets are on the wire while module k+1 runs forward and backward;
- in sequential mode, the trainable module's buckets start as its backward produces them.

A bucket of one tensor is reduced in place; a bucket of several small tensors is packed into one buffer (at most
`bucket_bytes`), and before the next buffer is packed the previous one is finished and unpacked, so at most one
bucket buffer is alive at a time: the extra memory over a one-process step is one bucket.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

DEFAULT_BUCKET_BYTES = 25 * 1024**2
"""As DDP's default `bucket_cap_mb=25`."""


@dataclass
class _Bucket:
    params: list[torch.Tensor]
    ready: int = 0
    launched: bool = False


@dataclass
class _InFlight:
    work: dist.Work
    bucket: _Bucket
    buffer: torch.Tensor | None = None  # packed gradients of a multi-tensor bucket
    done: bool = False


@dataclass
class GradientAverager:
    """Averages the gradients of `modules` (lists of parameters, one per trainable module) over the default process
    group, bucket by bucket, as their backward produces them.

    Call [`GradientAverager.start_step`] before the backward passes of a step whose gradients must be averaged (the
    last micro-batch of an accumulation), and [`GradientAverager.finish`] after them; [`GradientAverager.remove`]
    when the phase ends.

    Args:
        modules (`Iterable[Iterable[torch.Tensor]]`): the trainable parameters, grouped by module.
        bucket_bytes (`int`): largest packed bucket.
    """

    modules: Iterable[Iterable[torch.Tensor]]
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    buckets: list[_Bucket] = field(init=False, default_factory=list)
    max_buffer_bytes: int = field(init=False, default=0)
    """Largest total size of the packed buffers alive at once, in bytes (for tests and benchmarks)."""

    def __post_init__(self) -> None:
        self._world = dist.get_world_size()
        self._active = False
        self._in_flight: list[_InFlight] = []
        self._buffer_bytes = 0
        self._bucket_of: dict[int, _Bucket] = {}
        self._hooks = []
        for params in self.modules:
            params = [p for p in params if p.requires_grad]
            current: list[torch.Tensor] = []
            size = 0
            for param in reversed(params):
                nbytes = param.numel() * param.element_size()
                if current and size + nbytes > self.bucket_bytes:
                    self.buckets.append(_Bucket(current))
                    current, size = [], 0
                current.append(param)
                size += nbytes
            if current:
                self.buckets.append(_Bucket(current))
        for bucket in self.buckets:
            for param in bucket.params:
                self._bucket_of[id(param)] = bucket
                self._hooks.append(param.register_post_accumulate_grad_hook(self._grad_ready))

    def start_step(self) -> None:
        """The coming backward passes produce the gradients to average."""
        for bucket in self.buckets:
            bucket.ready, bucket.launched = 0, False
        self._seen: set[int] = set()
        self._active = True

    def _grad_ready(self, param: torch.Tensor) -> None:
        if not self._active:
            return
        if id(param) in self._seen:  # its reduction may already be on the wire: a later sum would be lost
            raise RuntimeError(
                f"A parameter of shape {tuple(param.shape)} received gradients from two backward passes in one step "
                "(a weight shared between modules): TRGL cannot average it while the second one runs. Give each "
                "module its own weights, or train with one module (`num_modules=1`)."
            )
        self._seen.add(id(param))
        bucket = self._bucket_of[id(param)]
        bucket.ready += 1
        if bucket.ready == len(bucket.params):
            self._launch(bucket)

    def _launch(self, bucket: _Bucket) -> None:
        bucket.launched = True
        for param in bucket.params:
            if param.grad is None:  # not reached by this step's loss: contributes zeros, as DDP does
                param.grad = torch.zeros_like(param)
        if len(bucket.params) == 1:
            work = dist.all_reduce(bucket.params[0].grad, async_op=True)
            self._in_flight.append(_InFlight(work, bucket))
            return
        for flight in self._in_flight:  # one packed buffer alive at a time
            if flight.buffer is not None and not flight.done:
                self._complete(flight)
        buffer = torch.cat([param.grad.reshape(-1) for param in bucket.params])
        self._buffer_bytes += buffer.numel() * buffer.element_size()
        self.max_buffer_bytes = max(self.max_buffer_bytes, self._buffer_bytes)
        self._in_flight.append(_InFlight(dist.all_reduce(buffer, async_op=True), bucket, buffer))

    def _complete(self, flight: _InFlight) -> None:
        flight.work.wait()
        if flight.buffer is None:
            flight.bucket.params[0].grad.div_(self._world)
        else:
            offset = 0
            flight.buffer.div_(self._world)
            for param in flight.bucket.params:
                param.grad.copy_(flight.buffer[offset : offset + param.numel()].view_as(param.grad))
                offset += param.numel()
            self._buffer_bytes -= flight.buffer.numel() * flight.buffer.element_size()
            flight.buffer = None
        flight.done = True

    def finish(self) -> None:
        """Start the buckets some of whose parameters got no gradient, then wait for every bucket: afterwards each
        trainable parameter's `.grad` holds the average over processes."""
        for bucket in self.buckets:
            if not bucket.launched:
                self._launch(bucket)
        for flight in self._in_flight:
            if not flight.done:
                self._complete(flight)
        self._in_flight.clear()
        self._active = False

    def remove(self) -> None:
        """Detach the hooks (the phase is over)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


__all__ = ["DEFAULT_BUCKET_BYTES", "GradientAverager"]
