"""How many processes train: the one answer to "is there a process group?" and "are there several processes?".

It lives on the model side because `TRGLModel` asks it too (`tau_scale="relative"` averages a scale over processes)
and a saved model's remote code carries only `modeling/` and `models/`; the training side reads it through
`trgl_hf.distributed.processes`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def has_process_group() -> bool:
    """Whether a `torch.distributed` process group is initialised (it may hold one process)."""
    return dist.is_available() and dist.is_initialized()


def is_multiprocess() -> bool:
    """Whether several processes train together (an initialised process group of more than one process)."""
    return has_process_group() and dist.get_world_size() > 1


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """`value` averaged in place over the processes of the process group (unchanged without one); returned."""
    if has_process_group():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


__all__ = ["has_process_group", "is_multiprocess", "mean_over_processes"]
