"""What the library needs to know about a model family to cut it into modules."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel


@dataclass
class BlockProbe:
    """Shape and training-memory facts about one residual block, measured by a probe forward pass.

    Args:
        channels (`int`): channels (or hidden size) of the block output.
        spatial_size (`tuple[int, ...]`): trailing dimensions of the block output (height, width for images).
        activation_bytes (`int`): bytes of tensors autograd saves for the block's backward, for one probe batch.
    """

    channels: int
    spatial_size: tuple[int, ...]
    activation_bytes: int


class ModelAdapter(ABC):
    """Cuts one family of models into a stem, an ordered list of residual blocks and a head.

    An adapter wraps the *backbone* of a task model (e.g. `ResNetModel` inside `ResNetForImageClassification`)
    and exposes the operations module-wise training needs: run the stem, run one block while measuring the kinetic
    energy of its residual branches, and export a prefix of the blocks with a head as a standalone model.
    """

    family: ClassVar[str]
    main_input_name: ClassVar[str] = "pixel_values"

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone
        self.blocks: list[nn.Module] = self.find_blocks(backbone)

    @classmethod
    @abstractmethod
    def can_cut(cls, model: nn.Module) -> bool:
        """Whether `model` (a task model or its backbone) belongs to this family."""

    @classmethod
    @abstractmethod
    def find_blocks(cls, backbone: nn.Module) -> list[nn.Module]:
        """The residual blocks of `backbone` in execution order, found by probing its modules."""

    @classmethod
    @abstractmethod
    def split_task_model(cls, model: nn.Module) -> tuple[nn.Module, nn.Linear | None]:
        """Return the backbone of a task model and its final linear classifier (None for a bare backbone)."""

    @classmethod
    @abstractmethod
    def backbone_from_config(cls, config: PreTrainedConfig) -> nn.Module:
        """Build an (untrained) backbone from the task model's configuration."""

    @abstractmethod
    def embed(self, **inputs: Any) -> torch.Tensor:
        """Run the stem (not penalised) and return the input of the first block."""

    @abstractmethod
    def run_block(self, index: int, hidden_state: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run block `index` and return its output and the kinetic energy mean(r ** 2) of each residual branch."""

    @abstractmethod
    def build_head(self, kind: str, probe: BlockProbe, num_labels: int, pool_size: int) -> nn.Module:
        """Build an auxiliary head reading a block output described by `probe`."""

    @abstractmethod
    def export_stage(self, num_blocks: int, head: nn.Module, num_labels: int) -> PreTrainedModel:
        """A standalone model made of the stem, the first `num_blocks` blocks and `head`, with identical outputs."""

    @abstractmethod
    def probe_inputs(self, image_size: int | None, batch_size: int = 2) -> dict[str, torch.Tensor]:
        """Example inputs for probing block shapes."""

    def probe_blocks(self, inputs: dict[str, torch.Tensor]) -> list[BlockProbe]:
        """Run one training-mode forward pass and measure every block's output shape and saved activations.

        Args:
            inputs (`dict[str, torch.Tensor]`): example inputs (see `probe_inputs`).

        Returns:
            `list[BlockProbe]`: one entry per block; the stem's saved activations are counted in block 0.
        """
        saved_bytes = [0]

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            saved_bytes[0] += tensor.numel() * tensor.element_size()
            return tensor

        probes = []
        was_training = self.backbone.training
        self.backbone.train()
        states = {name: buffer.clone() for name, buffer in self.backbone.named_buffers()}
        try:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                hidden = self.embed(**inputs)
                for index in range(len(self.blocks)):
                    hidden, _ = self.run_block(index, hidden)
                    probes.append(
                        BlockProbe(
                            channels=int(hidden.shape[1]) if hidden.dim() == 4 else int(hidden.shape[-1]),
                            spatial_size=tuple(int(s) for s in hidden.shape[2:]) if hidden.dim() == 4 else (),
                            activation_bytes=saved_bytes[0],
                        )
                    )
                    saved_bytes[0] = 0
        finally:
            with torch.no_grad():
                for name, buffer in self.backbone.named_buffers():
                    buffer.copy_(states[name])
            self.backbone.train(was_training)
        return probes
