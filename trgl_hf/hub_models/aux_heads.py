"""Auxiliary heads for convolutional feature maps (batch, channels, height, width).

Self-contained (torch only): this file is copied next to stage checkpoints that load with `trust_remote_code`.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvAuxHead(nn.Module):
    """The auxiliary head of DGL / TRGL: conv3x3 -> ReLU -> average pooling -> BatchNorm -> linear.

    Args:
        channels (`int`): channels of the module output it reads.
        num_labels (`int`): number of classes.
        pool_size (`int`): side of the pooled feature map (adaptive average pooling).
    """

    def __init__(self, channels: int, num_labels: int, pool_size: int = 2):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.activation = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.norm = nn.BatchNorm2d(channels)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(channels * pool_size * pool_size, num_labels)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        hidden_state = self.pool(self.activation(self.conv(hidden_state)))
        return self.linear(self.flatten(self.norm(hidden_state)))


class PoolLinearHead(nn.Module):
    """Global average pooling and a linear layer: the classifier of ResNets.

    Args:
        channels (`int`): channels of the module output it reads.
        num_labels (`int`): number of classes.
    """

    def __init__(self, channels: int, num_labels: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(channels, num_labels)

    def forward(self, hidden_state: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flatten(self.pool(hidden_state)))


def build_conv_feature_head(kind: str, channels: int, num_labels: int, pool_size: int = 2) -> nn.Module:
    """Build an auxiliary head for a convolutional feature map.

    Args:
        kind (`str`): `"conv"` for [`ConvAuxHead`] or `"linear"` for [`PoolLinearHead`].
        channels (`int`): channels of the feature map.
        num_labels (`int`): number of classes.
        pool_size (`int`, *optional*, defaults to 2): pooled side of the `"conv"` head.

    Returns:
        `nn.Module`: the head.
    """
    if kind == "conv":
        return ConvAuxHead(channels, num_labels, pool_size)
    if kind == "linear":
        return PoolLinearHead(channels, num_labels)
    raise ValueError(f"Unknown auxiliary head {kind!r}: use 'conv' or 'linear'.")
