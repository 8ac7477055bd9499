"""ResNets: transformers' `ResNetModel` and this library's CIFAR ResNet-20..110 (same module layout).

A block computes `activation(layer(x) + shortcut(x))`; its residual branch is the output of `block.layer`,
captured by a forward hook. When the branch ends with a training-mode batch normalization (every ResNet block), the
energy is fused with it (`BatchNormBranchEnergy`: the branch is recomputed in backward instead of being kept);
otherwise the branch is cloned before the in-place addition. Downsampling blocks are penalised like the
others (their branch is what the official code penalises); the stem (`embedder`) is not.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForImageClassification, PreTrainedConfig, PreTrainedModel

from ...models.aux_heads import PoolLinearHead, build_conv_feature_head
from ...models.configuration_trgl_stage import TRGLStageConfig
from ...models.modeling_trgl_stage import TRGLStageForImageClassification
from ..losses import BatchNormBranchEnergy
from .base import BlockProbe, BlockState, ModelCutter, StageWeights, truncate_depths


def _is_residual_block(module: nn.Module) -> bool:
    return isinstance(getattr(module, "layer", None), nn.Module) and isinstance(
        getattr(module, "shortcut", None), nn.Module
    )


class ResNetCutter(ModelCutter):
    """Cutter for backbones with an `embedder` stem and blocks exposing `layer` (residual branch) and `shortcut`."""

    family = "resnet"
    head_kinds = ("conv", "linear")
    default_head = "conv"

    def find_blocks(self, backbone: nn.Module) -> list[nn.Module]:
        blocks = [module for module in backbone.modules() if _is_residual_block(module)]
        if not hasattr(backbone, "embedder") or not blocks:
            raise ValueError(f"{type(backbone).__name__} has no `embedder` stem or no `layer`/`shortcut` blocks.")
        return blocks

    @classmethod
    def split_task_model(cls, model: nn.Module, spec: Any) -> tuple[nn.Module, nn.Module | None]:
        backbone = getattr(model, "base_model", model)
        if backbone is model:
            return model, None
        backbone_ids = {id(m) for m in backbone.modules()}
        linears = [m for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in backbone_ids]
        return backbone, (linears[-1] if linears else None)

    def embed(self, pixel_values: torch.Tensor | None = None, **_: Any) -> BlockState:
        if pixel_values is None:
            raise ValueError("ResNet modules need `pixel_values` (batch, channels, height, width).")
        return BlockState(self.backbone.embedder(pixel_values))

    def run_block(self, index: int, state: BlockState, energy: bool = False) -> tuple[BlockState, list[torch.Tensor]]:
        block = self.blocks[index]
        energies: list[torch.Tensor] = []
        fused: dict[str, torch.Tensor] = {}

        def fuse_with_normalization(module: nn.BatchNorm2d, args: tuple, output: torch.Tensor) -> torch.Tensor:
            fused["branch"], fused["energy"] = BatchNormBranchEnergy.apply(
                output, args[0], module.weight, module.bias, module.eps
            )
            return fused["branch"]

        def capture(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if fused.get("branch") is output:
                energies.append(fused["energy"])
            else:
                energies.append(self.energy(output, energy, needs_copy=True))

        handles = [block.layer.register_forward_hook(capture)]
        normalization = self._final_normalization(block, energy)
        if normalization is not None:
            handles.append(normalization.register_forward_hook(fuse_with_normalization))
        try:
            output = block(state.hidden)
        finally:
            for handle in handles:
                handle.remove()
        return state.with_hidden(output), energies

    def _final_normalization(self, block: nn.Module, energy: bool) -> nn.BatchNorm2d | None:
        """The batch normalization whose output is the branch, when the energy can be fused with it (training mode,
        plain `nn.BatchNorm2d`: `SyncBatchNorm` normalizes with statistics of other processes that a recomputation
        would not see); `None` otherwise (the branch is copied before the in-place addition)."""
        if not (energy and torch.is_grad_enabled()):
            return None
        normalizations = [m for m in block.layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        last = normalizations[-1] if normalizations else None
        if last is None or type(last) is not nn.BatchNorm2d or not last.training:
            return None
        return last

    def build_head(
        self, kind: str, probe: BlockProbe, num_labels: int, pool_size: int, is_last: bool, num_blocks: int
    ) -> nn.Module:
        kind = "linear" if kind == "native" else kind
        if kind == "conv" and min(probe.spatial_size) < pool_size:
            raise ValueError(
                f"A module output is only {probe.spatial_size} pixels but the conv head pools to "
                f"{pool_size}x{pool_size}: use larger images, a smaller `head_pool_size`, or `aux_head='linear'`."
            )
        parameter = next(self.backbone.parameters())  # the backbone's device and dtype (e.g. bfloat16)
        head = build_conv_feature_head(kind, probe.channels, num_labels, pool_size)
        head = head.to(device=parameter.device, dtype=parameter.dtype)
        classifier = self.head_template
        if is_last and isinstance(head, PoolLinearHead) and classifier is not None:
            if classifier.weight.shape == head.linear.weight.shape:
                head.linear.load_state_dict(classifier.state_dict())
        return head

    def probe_inputs(self, image_size: int | None, batch_size: int = 2) -> dict[str, torch.Tensor]:
        config = self.backbone.config
        size = image_size or getattr(config, "image_size", None) or 224
        parameter = next(self.backbone.parameters())
        return {
            "pixel_values": torch.randn(
                batch_size, config.num_channels, size, size, device=parameter.device, dtype=parameter.dtype
            )
        }

    def truncated_config(self, num_blocks: int, num_labels: int) -> PreTrainedConfig:
        """The backbone's configuration with only the stages needed for the first `num_blocks` blocks."""
        depths = truncate_depths(self.backbone.config.depths, num_blocks)
        config = copy.deepcopy(self.backbone.config)
        config.depths = depths
        config.hidden_sizes = list(config.hidden_sizes[: len(depths)])
        config.num_labels = num_labels
        if hasattr(config, "stage_names"):
            config.stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(depths) + 1)]
            config.out_features, config.out_indices = None, None
            with contextlib.suppress(AttributeError, ValueError, TypeError):
                config.set_output_features_output_indices(out_features=None, out_indices=None)
        config.architectures = None
        return config

    def export_stage(
        self, num_blocks: int, head: nn.Module, num_labels: int, share_weights: bool = False
    ) -> PreTrainedModel:
        config = self.truncated_config(num_blocks, num_labels)
        if isinstance(head, PoolLinearHead):

            def native_weights(model: nn.Module) -> StageWeights:
                prefix = model.base_model_prefix
                state = self.truncated_backbone_state(model.base_model, prefix + ".")
                linear = [name for name, m in model.classifier.named_modules() if isinstance(m, nn.Linear)][-1]
                state.update({f"classifier.{linear}.{key}": value for key, value in head.linear.state_dict().items()})
                return state, [(prefix, self.backbone)]

            return self.build_stage(lambda: AutoModelForImageClassification.from_config(config), native_weights,
                                    share_weights)  # fmt: skip
        stage_config = TRGLStageConfig(
            backbone_config=config.to_dict(),
            aux_head="conv",
            head_pool_size=head.pool.output_size
            if isinstance(head.pool.output_size, int)
            else head.pool.output_size[0],
            head_channels=head.conv.in_channels,
            num_labels=num_labels,
        )

        def stage_weights(model: nn.Module) -> StageWeights:
            state = self.truncated_backbone_state(model.backbone, "backbone.")
            state.update({f"head.{key}": value for key, value in head.state_dict().items()})
            return state, [("backbone", self.backbone), ("head", head)]

        return self.build_stage(lambda: TRGLStageForImageClassification(stage_config), stage_weights, share_weights)


class RegNetCutter(ResNetCutter):
    """RegNet (X and Y): ResNet's block layout (`layer` ending with a BatchNorm, `shortcut`, in-place addition); the
    Y blocks' squeeze-and-excitation sits inside the branch. Its default head is the native one (average pooling and
    a linear classifier, `aux_head="linear"`), so every stage exports as a `RegNetForImageClassification`."""

    family = "regnet"
    default_head = "linear"
