"""How many processes train: the one answer to "is there a process group?" and "are there several processes?".

(`trgl_hf.modeling` asks the first question itself, once, for `tau_scale="relative"`: a saved model's remote code
carries only `modeling/` and `models/`.)
"""

from __future__ import annotations

import torch.distributed as dist


def has_process_group() -> bool:
    """Whether a `torch.distributed` process group is initialised (it may hold one process)."""
    return dist.is_available() and dist.is_initialized()


def is_multiprocess() -> bool:
    """Whether several processes train together (an initialised process group of more than one process)."""
    return has_process_group() and dist.get_world_size() > 1


__all__ = ["has_process_group", "is_multiprocess"]
