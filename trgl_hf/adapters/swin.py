"""Swin transformers: blocks grouped in stages, with patch merging (not penalised) between stages.

A module may hold blocks of one or several stages. The patch merging that follows a stage runs at the start of the
next stage's first block, so a module that ends with a stage outputs that stage's features (as the native truncated
model does). Each module gets the family's head at its width: final LayerNorm, average pooling, linear classifier.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .base import BlockProbe, BlockState, task_model_from_config, truncate_depths
from .transformer import TransformerAdapter


def _stages(backbone: nn.Module) -> list[nn.Module]:
    for module in backbone.modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module)
            and all(
                isinstance(getattr(stage, "blocks", None), nn.ModuleList) and hasattr(stage, "downsample")
                for stage in module
            )
        ):
            return list(module)
    return []


class SwinHead(nn.Module):
    """LayerNorm, average pooling over tokens, linear classifier: Swin's classification head at one width."""

    def __init__(self, width: int, num_labels: int, eps: float = 1e-5):
        super().__init__()
        self.layernorm = nn.LayerNorm(width, eps=eps)
        self.classifier = nn.Linear(width, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layernorm(hidden).mean(dim=1))


class SwinAdapter(TransformerAdapter):
    """Adapter for Swin-like backbones (`encoder.layers[i].blocks[j]`, `downsample` after each stage)."""

    family = "swin"
    head_kinds = ("native",)
    default_head = "native"
    context_input_names = ("pixel_values",)

    def __init__(self, backbone: nn.Module, head_template: nn.Module | None = None):
        super().__init__(backbone, head_template)
        self.stages = _stages(backbone)
        self.position = [(s, j) for s, stage in enumerate(self.stages) for j in range(len(stage.blocks))]

    @classmethod
    def can_cut(cls, model: nn.Module) -> bool:
        backbone = getattr(model, "base_model", model)
        return isinstance(backbone, PreTrainedModel) and bool(_stages(backbone))

    @classmethod
    def find_blocks(cls, backbone: nn.Module) -> list[nn.Module]:
        return [block for stage in _stages(backbone) for block in stage.blocks]

    @classmethod
    def split_task_model(cls, model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        backbone = getattr(model, "base_model", model)
        if backbone is model:
            return model, None
        template = SwinHead(backbone.layernorm.normalized_shape[0], model.config.num_labels, backbone.layernorm.eps)
        template.layernorm.load_state_dict(backbone.layernorm.state_dict())
        template.classifier.load_state_dict(model.classifier.state_dict())
        template.architecture = type(model).__name__
        return backbone, template

    def embed(self, **inputs: Any) -> BlockState:
        state = super().embed(**inputs)
        state.kwargs.pop("output_hidden_states_before_downsampling", None)
        return state

    def run_block(self, index: int, state: BlockState) -> tuple[BlockState, list[torch.Tensor]]:
        stage, position = self.position[index]
        if position == 0 and stage > 0:
            height, width = state.args[0]
            merged = self.stages[stage - 1].downsample(state.hidden, (height, width))
            state = BlockState(merged, (((height + 1) // 2, (width + 1) // 2), *state.args[1:]), state.kwargs)
        return super().run_block(index, state)

    def unused_backbone_modules(self) -> list[nn.Module]:
        return [self.backbone.layernorm]

    def block_extras(self, index: int) -> list[nn.Module]:
        stage, position = self.position[index]
        return [self.stages[stage - 1].downsample] if position == 0 and stage > 0 else []

    def build_head(self, kind: str, probe: BlockProbe, num_labels: int, pool_size: int, is_last: bool) -> nn.Module:
        head = SwinHead(probe.channels, num_labels)
        template = self.head_template
        if is_last and template is not None and template.classifier.weight.shape == head.classifier.weight.shape:
            head.load_state_dict(template.state_dict())
        return head

    def export_stage(self, num_blocks: int, head: nn.Module, num_labels: int) -> PreTrainedModel:
        config = copy.deepcopy(self.backbone.config)
        depths = truncate_depths(config.depths, num_blocks)
        settings = config.to_dict()
        settings.update(
            depths=depths, num_heads=list(config.num_heads[: len(depths)]), num_labels=num_labels,
            architectures=[self.architecture], out_features=None, out_indices=None, stage_names=None,
        )  # fmt: skip
        settings.pop("hidden_size", None)
        settings.pop("num_layers", None)
        new_config = type(config)(**{k: v for k, v in settings.items() if k != "model_type"})
        model = task_model_from_config(new_config)
        source = self.backbone.state_dict()
        target = model.base_model
        names = [name for name in target.state_dict() if not name.startswith("layernorm.")]
        state = {name: source[name] for name in names}
        state.update({f"layernorm.{k}": v for k, v in head.layernorm.state_dict().items()})
        target.load_state_dict(state, strict=True)
        model.classifier.load_state_dict(head.classifier.state_dict())
        return model.eval()
