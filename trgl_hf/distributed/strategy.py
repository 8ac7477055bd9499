"""How a run crosses processes, as one object the trainer holds: one process, averaged gradients (several processes,
each with the whole model) or FSDP2 (each module sharded on its own). The trainer calls the same methods in each case:
prepare a phase, start and finish a step, clip, broadcast buffers, gather for saving."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .fsdp import (
    FSDPSettings,
    average_task_losses,
    full_lap_states,
    gathered_for_saving,
    local_norm,
    shard_modules,
    shard_optimizer_state,
)
from .grad_sync import DEFAULT_BUCKET_BYTES, GradientAverager
from .processes import is_multiprocess


class SingleProcess:
    """One process: every method is local; the transport multipliers read this process's losses."""

    fsdp: FSDPSettings | None = None
    """The FSDP2 settings the trainer applies (`None`: the model is not sharded)."""

    def prepare_phase(self, model: nn.Module, device: torch.device) -> None:
        """Before a phase's optimizer is built (its trainable parameters are set)."""
        self.end_phase()

    def end_phase(self) -> None:
        """After a phase: drop what belongs to its trainable parameters."""

    def start_step(self, net: Any) -> None:
        """Before the first backward of a step whose gradients are synchronised."""

    def finish_step(self, net: Any, task_losses: dict[int, torch.Tensor], step: int) -> None:
        """After the last backward of a synchronised step: the gradients are final; update the multipliers."""
        net.transport_schedule.after_step(step, task_losses)

    def broadcast_buffers(self, net: Any, modules: Any = None) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics) of `modules` (all by default)."""

    def clip(self, net: Any, max_norm: float) -> torch.Tensor:
        """Clip each trainable module's gradients on their own to `max_norm`; return the global norm."""
        norms = []
        for index in net.trainable_modules:
            params = [p for p in net.module_parameters(index) if p.grad is not None]
            if params:
                norms.append(local_norm(torch.nn.utils.clip_grad_norm_(params, max_norm)))
        if not norms:
            return torch.zeros(())
        return torch.stack([n.float() for n in norms]).pow(2).sum().sqrt()

    def gathered_for_saving(self, model: nn.Module, writer: bool) -> contextlib.AbstractContextManager:
        """The model's full weights, for the duration of a save."""
        return gathered_for_saving(model, self.fsdp, writer=writer)

    def full_lap_states(self, lap_states: dict[int, dict[str, Any]], writer: bool) -> dict[int, dict[str, Any]]:
        """The multilap optimizer states as they are saved (FSDP: gathered)."""
        return full_lap_states(lap_states, self.fsdp, writer=writer)

    def shard_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer state read back whole, laid out as the parameters are (FSDP: sharded)."""
        shard_optimizer_state(optimizer, self.fsdp)


class AveragedGradients(SingleProcess):
    """Several processes, each with the whole model (DDP's contract, without its wrapper): gradients are averaged by
    bucketed all-reduces started during backward, the losses the multipliers read are averaged, and buffers follow
    rank 0 before each step, cache, evaluation and save, as DDP's `broadcast_buffers` does.

    Args:
        bucket_bytes (`int`): size of the gradient buckets (`ddp_bucket_cap_mb`).
    """

    def __init__(self, bucket_bytes: int = DEFAULT_BUCKET_BYTES):
        self.bucket_bytes = bucket_bytes
        self.averager: GradientAverager | None = None

    def end_phase(self) -> None:
        if self.averager is not None:
            self.averager.remove()
            self.averager = None

    def start_step(self, net: Any) -> None:
        if self.averager is None:  # its hooks are on the phase's trainable parameters
            modules = [list(net.module_parameters(index)) for index in net.trainable_modules]
            self.averager = GradientAverager(modules, bucket_bytes=self.bucket_bytes)
        self.averager.start_step()

    def finish_step(self, net: Any, task_losses: dict[int, torch.Tensor], step: int) -> None:
        if self.averager is not None:
            self.averager.finish()
        net.transport_schedule.after_step(step, average_task_losses(task_losses))

    def broadcast_buffers(self, net: Any, modules: Any = None) -> None:
        for buffer in net.module_buffers(modules):
            dist.broadcast(buffer.data, src=0)


class FullyShardedModules(AveragedGradients):
    """FSDP2, applied by the trainer to each module (`trgl_hf.distributed.fsdp`): FSDP reduce-scatters the gradients
    itself; the multipliers still read the averaged losses; saves gather the full weights.

    Args:
        settings (`FSDPSettings`): what to shard and how.
    """

    def __init__(self, settings: FSDPSettings):
        super().__init__()
        self.fsdp = settings

    def prepare_phase(self, model: nn.Module, device: torch.device) -> None:
        shard_modules(model, self.fsdp, device)  # sharded once; before every optimizer, the trained parameters set

    def start_step(self, net: Any) -> None:
        pass

    def broadcast_buffers(self, net: Any, modules: Any = None) -> None:
        if is_multiprocess():
            super().broadcast_buffers(net, modules)


DistributedStrategy = SingleProcess
"""The interface every strategy implements (the single-process one is the base)."""


def distributed_strategy(fsdp: FSDPSettings | None, bucket_cap_mb: float | None = None) -> DistributedStrategy:
    """The strategy of this process's run: FSDP2 when `fsdp` is given, averaged gradients with several processes, else
    one process."""
    if fsdp is not None:
        return FullyShardedModules(fsdp)
    if is_multiprocess():
        return AveragedGradients(int(bucket_cap_mb * 1024**2) if bucket_cap_mb else DEFAULT_BUCKET_BYTES)
    return SingleProcess()
