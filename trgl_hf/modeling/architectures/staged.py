"""Hierarchical vision models: blocks grouped in stages, with a width-changing layer between stages.

- Swin / Swinv2: `encoder.layers[s].blocks`; the patch merging (`downsample`) that closes stage s runs at the start of
  stage s + 1's first block, so a module that ends a stage outputs that stage's features, as the truncated native
  model does.
- ConvNeXt / ConvNeXt V2: `encoder.stages[s].layers`; the stage's `downsampling_layer` opens it.

The layer between stages trains with the block after it and is not penalised (it changes the width: it is not a
residual branch). A module's head is the native head of the model truncated after that module (final norm and
classifier at that stage's width), so every stage exports as the family's own class.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .base import BlockProbe, BlockState, default_dtype, task_model_from_config, truncate_depths
from .native_head import NativeHead
from .transformer import TransformerCutter


def swin_tail(modules: nn.Module, hidden: torch.Tensor) -> dict[str, Any]:
    """Swin's backbone output: final LayerNorm, then average pooling over tokens."""
    hidden = modules.layernorm(hidden)
    pooler = getattr(modules, "pooler", None)
    pooled = torch.flatten(pooler(hidden.transpose(1, 2)), 1) if pooler is not None else None
    return {"last_hidden_state": hidden, "pooler_output": pooled}


def convnext_tail(modules: nn.Module, hidden: torch.Tensor) -> dict[str, Any]:
    """ConvNeXt's backbone output: global average pooling, then the final LayerNorm."""
    return {"last_hidden_state": hidden, "pooler_output": modules.layernorm(hidden.mean([-2, -1]))}


class StagedCutter(TransformerCutter):
    """Common part of the hierarchical cutters: blocks in stages, a transition layer between stages."""

    stage_list: str
    block_list: str
    per_stage: tuple[str, ...] = ("num_heads", "hidden_sizes", "pretrained_window_sizes")
    """The config's per-stage lists, cut to the stages a truncated model keeps."""
    context_input_names = ("pixel_values",)
    head_kinds = ("native",)  # image models: the head of the model truncated after the module

    def stages(self, backbone: nn.Module | None = None) -> list[nn.Module]:
        """The backbone's stages, in order."""
        return list((backbone or self.backbone).get_submodule(self.stage_list))

    def find_blocks(self, backbone: nn.Module) -> list[nn.Module]:
        stages = self.stages(backbone)
        self.position = [(s, j) for s, stage in enumerate(stages) for j in range(len(getattr(stage, self.block_list)))]
        return [block for stage in stages for block in getattr(stage, self.block_list)]

    def transition(self, index: int) -> nn.Module | None:
        """The layer that runs before block `index` (the first block of a stage after the first), if any."""
        raise NotImplementedError

    def apply_transition(self, index: int, state: BlockState, hidden: torch.Tensor) -> torch.Tensor:
        """Run the transition layer before block `index` on `hidden`."""
        raise NotImplementedError

    def block_extras(self, index: int) -> list[nn.Module]:
        transition = self.transition(index)
        return [transition] if transition is not None else []

    def run_block(self, index: int, state: BlockState, energy: bool = False) -> tuple[BlockState, list[torch.Tensor]]:
        if self.transition(index) is not None:
            state = state.with_hidden(self.apply_transition(index, state, state.hidden))
        return super().run_block(index, state, energy)

    def stage_config(self, num_blocks: int) -> Any:
        config = copy.deepcopy(self.backbone.config)
        depths = truncate_depths(config.depths, num_blocks)
        settings = config.to_dict()
        settings.update(depths=depths, architectures=[self.architecture], out_features=None, out_indices=None,
                        stage_names=None)  # fmt: skip
        for name in self.per_stage:
            if isinstance(settings.get(name), list):
                settings[name] = settings[name][: len(depths)]
        for name in ("num_stages", "num_encoder_blocks"):
            if name in settings:
                settings[name] = len(depths)
        for name in ("hidden_size", "num_layers", "model_type", "transformers_version"):
            settings.pop(name, None)
        return type(config)(**settings)

    def build_head(
        self, kind: str, probe: BlockProbe, num_labels: int, pool_size: int, is_last: bool, num_blocks: int
    ) -> nn.Module:
        if self.head_template is None:
            raise ValueError("The model was built without its head: cut it with `TRGLModel.from_base(task_model)`.")
        if num_blocks == len(self.blocks):
            return copy.deepcopy(self.head_template)
        with default_dtype(self.dtype):
            truncated = task_model_from_config(self.stage_config(num_blocks))
        head = NativeHead(truncated, self.stage_tail_names(truncated), self.spec.tail)
        head.load_matching(self.head_template)
        return head

    def stage_tail_names(self, truncated: nn.Module) -> tuple[str, ...]:
        """The backbone submodules of a truncated stage model that its head runs after the last block."""
        return self.spec.tail_modules(truncated.base_model)


class SwinCutter(StagedCutter):
    """Swin and Swinv2: `encoder.layers[s].blocks[j]`, patch merging (`downsample`) after each stage."""

    family = "swin"
    stage_list = "encoder.layers"
    block_list = "blocks"

    def transition(self, index: int) -> nn.Module | None:
        stage, position = self.position[index]
        return self.stages()[stage - 1].downsample if position == 0 and stage > 0 else None

    def apply_transition(self, index: int, state: BlockState, hidden: torch.Tensor) -> torch.Tensor:
        args, _ = state.call(index - 1)  # the previous stage's resolution
        return self.transition(index)(hidden, args[0])


class ConvNextCutter(StagedCutter):
    """ConvNeXt and ConvNeXt V2: `encoder.stages[s].layers[j]`, a `downsampling_layer` opening each stage."""

    family = "convnext"
    stage_list = "encoder.stages"
    block_list = "layers"

    def transition(self, index: int) -> nn.Module | None:
        stage, position = self.position[index]
        if position != 0 or stage == 0:
            return None
        layer = self.stages()[stage].downsampling_layer
        return layer if any(True for _ in layer.parameters()) else None

    def apply_transition(self, index: int, state: BlockState, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.transition(index):
            hidden = layer(hidden)
        return hidden


__all__ = ["ConvNextCutter", "StagedCutter", "SwinCutter", "convnext_tail", "swin_tail"]
