"""BiT (Big Transfer, ResNet v2): `encoder.stages[s].layers[j]`, weight-standardised convolutions, group norms.

A block adds `drop_path(branch)` to its shortcut (the input, or a strided 1x1 convolution of it in the first block of
a stage): `out = drop_path(branch) + shortcut` for pre-activation blocks (`layer_type="preactivation"`, the default),
`out = activation(drop_path(branch) + shortcut)` for `layer_type="bottleneck"`. The transport term penalises the
output of the block's `drop_path`, which is exactly what is added (zero for a dropped sample in training); it is
captured by a forward hook, so neither the block layout nor the shortcut enters it. The stem (`embedder`) is not
penalised. A module's head is the native head of the model truncated after that module (pre-activation: final group
norm, then average pooling and the classifier), so every stage exports as a `BitForImageClassification`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import BlockState
from .staged import StagedCutter


class BitCutter(StagedCutter):
    """BiT: blocks in `encoder.stages[s].layers`, the branch is the output of each block's `drop_path`."""

    family = "bit"
    stage_list = "encoder.stages"
    block_list = "layers"

    def transition(self, index: int) -> nn.Module | None:
        return None  # the downsampling convolution is the first block's shortcut

    def embed(self, pixel_values: torch.Tensor | None = None, **_: Any) -> BlockState:
        if pixel_values is None:
            raise ValueError(f"{self.spec.name} modules need `pixel_values` (batch, channels, height, width).")
        return BlockState(self.backbone.embedder(pixel_values))

    def state_from_cache(self, hidden: torch.Tensor, **inputs: Any) -> BlockState:
        return BlockState(hidden)

    def run_block(self, index: int, state: BlockState, energy: bool = False) -> tuple[BlockState, list[torch.Tensor]]:
        block = self.blocks[index]
        branches: list[torch.Tensor] = []
        handle = block.drop_path.register_forward_hook(lambda module, args, output: branches.append(output))
        try:
            output = block(state.hidden)
        finally:
            handle.remove()
        if len(branches) != 1 or branches[0].shape != output.shape:
            raise ValueError(
                f"Block {index} of {self.spec.name} did not add one branch through its `drop_path` "
                f"({len(branches)} calls): its transport term cannot be computed exactly. Was the model modified?"
            )
        return state.with_hidden(output), [self.energy(branches[0], energy)]


__all__ = ["BitCutter"]
