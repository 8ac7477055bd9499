"""More hierarchical vision models, cut like Swin and ConvNeXt (see `staged`): blocks in stages, the layer between two
stages trains with the block after it and is not penalised, and a module's head is the native head of the model
truncated after that module, so every stage exports as the family's own class.

- PVT-v2: `encoder.layers[s].blocks[j]` (pre-norm attention with spatial reduction, then a convolutional MLP; the
  branches after drop path). Each stage opens with an overlapping patch embedding and closes with its own LayerNorm:
  between stages s and s + 1 the transition is stage s's LayerNorm, the reshape to a feature map and stage s + 1's
  patch embedding. A truncated model ends with the LayerNorm of its last stage, so each head holds its own copy of it
  (the backbone's copy runs as the next stage's transition).
- FocalNet: `encoder.stages[s].layers[j]` (focal modulation then MLP, with optional layer scale `gamma_1`/`gamma_2`
  and post-layernorm); the patch embedding that closes stage s (`downsample`) runs before stage s + 1's first block.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import BlockState
from .native_head import NativeHead
from .spec import StreamPoints
from .staged import StagedCutter


def pvt_v2_tail(modules: nn.Module, hidden: torch.Tensor) -> dict[str, Any]:
    """PVT-v2's backbone output for its classifier: the last stage's LayerNorm, then the tokens as a `1 x length` map
    (the classifier averages over every position, so the order of the positions, not the map's shape, matters: it is
    the stream's row-major order, as in the native feature map)."""
    (norm,) = [module for module in modules.modules() if isinstance(module, nn.LayerNorm)]
    hidden = norm(hidden)
    return {"last_hidden_state": hidden.transpose(1, 2).unsqueeze(2), "pooler_output": None}


class PvtV2Cutter(StagedCutter):
    """PVT-v2: `encoder.layers[s].blocks[j]`; stage s's LayerNorm and stage s + 1's patch embedding between them."""

    family = "pvt_v2"
    stage_list = "encoder.layers"
    block_list = "blocks"
    per_stage = ("sr_ratios", "hidden_sizes", "patch_sizes", "strides", "num_attention_heads", "mlp_ratios")

    @staticmethod
    def stage_norm(num_stages: int) -> str:
        """The LayerNorm that closes a model of `num_stages` stages (its last stage's)."""
        return f"encoder.layers.{num_stages - 1}.layer_norm"

    @classmethod
    def split_task_model(cls, model: nn.Module, spec: Any) -> tuple[nn.Module, nn.Module | None]:
        backbone = model.base_model
        return backbone, NativeHead(model, (cls.stage_norm(len(backbone.config.depths)),), spec.tail)

    def unused_backbone_modules(self) -> list[nn.Module]:
        return [self.stages()[-1].layer_norm]

    def transition(self, index: int) -> nn.Module | None:
        stage, position = self.position[index]
        return self.stages()[stage].patch_embedding if position == 0 and stage > 0 else None

    def block_extras(self, index: int) -> list[nn.Module]:
        stage, position = self.position[index]
        return [self.stages()[stage - 1].layer_norm, self.transition(index)] if position == 0 and stage > 0 else []

    def apply_transition(self, index: int, state: BlockState, hidden: torch.Tensor) -> torch.Tensor:
        (height, width, *_), _ = state.call(index - 1)  # the previous stage's resolution
        stage, _ = self.position[index]
        hidden = self.stages()[stage - 1].layer_norm(hidden)
        hidden = hidden.reshape(hidden.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous()
        hidden, new_height, new_width = self.transition(index)(hidden)
        expected = state.call(index)[0][:2]
        if (new_height, new_width) != tuple(expected):
            raise ValueError(f"Stage {stage} of {self.spec.name} got a {new_height}x{new_width} map, not {expected}.")
        return hidden

    def probe_inputs(self, image_size: int | None, batch_size: int = 2) -> dict[str, torch.Tensor]:
        size = image_size or self.backbone.config.image_size or 224  # PVT-v2's own layers never read `image_size`
        size = size if isinstance(size, int) else size[0]
        parameter = next(self.backbone.parameters())
        channels = self.backbone.config.num_channels
        return {"pixel_values": torch.randn(batch_size, channels, size, size, device=parameter.device)}

    def stage_tail_names(self, truncated: nn.Module) -> tuple[str, ...]:
        return (self.stage_norm(len(truncated.config.depths)),)  # the truncated model's last stage's closing LayerNorm


def focalnet_layout(config: Any) -> StreamPoints:
    """FocalNet's stream point between its branches: the MLP reads the stream with post-layernorm, its norm without."""
    return StreamPoints(("mlp",) if config.use_post_layernorm else ("norm2",))


class FocalNetCutter(StagedCutter):
    """FocalNet: `encoder.stages[s].layers[j]`, the patch embedding (`downsample`) closing each stage but the last."""

    family = "focalnet"
    stage_list = "encoder.stages"
    block_list = "layers"
    per_stage = ("hidden_sizes", "focal_levels", "focal_windows")

    def transition(self, index: int) -> nn.Module | None:
        stage, position = self.position[index]
        return self.stages()[stage - 1].downsample if position == 0 and stage > 0 else None

    def apply_transition(self, index: int, state: BlockState, hidden: torch.Tensor) -> torch.Tensor:
        (dimensions, *_), _ = state.call(index - 1)  # the previous stage's resolution
        height, width = dimensions
        hidden = hidden.transpose(1, 2).reshape(hidden.shape[0], -1, height, width)
        hidden, _ = self.transition(index)(hidden)
        return hidden


__all__ = ["FocalNetCutter", "PvtV2Cutter", "focalnet_layout", "pvt_v2_tail"]
