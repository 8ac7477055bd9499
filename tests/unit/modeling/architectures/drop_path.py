"""What each residual branch adds in train mode, read where it leaves the block: the block's drop path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def drop_path_outputs(model) -> Iterator[list[torch.Tensor]]:
    """The output of every block's `drop_path` while the context is open (it runs once per branch), in call order."""
    added: list[torch.Tensor] = []
    handles = [block.drop_path.register_forward_hook(lambda module, args, output: added.append(output.detach()))
               for block in model.adapter.blocks]  # fmt: skip
    try:
        yield added
    finally:
        for handle in handles:
            handle.remove()
