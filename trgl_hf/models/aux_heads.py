"""Auxiliary heads with no native equivalent: for convolutional feature maps (batch, channels, height, width) and for
token sequences (batch, length, hidden).

Self-contained (torch only): this file is copied next to stage checkpoints that load with `trust_remote_code`.
"""

from __future__ import annotations

import torch
from torch import nn


class PooledBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` that also trains on a batch holding one value per channel (one row pooled to 1x1), where
    `nn.BatchNorm2d` raises: such a batch has no batch statistics, so it is normalised with the running statistics,
    which it leaves unchanged (exactly as in eval mode). Any other batch is normalised as by `nn.BatchNorm2d`.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or input.numel() != input.shape[1] or self.running_mean is None:
            return super().forward(input)
        return nn.functional.batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


class ConvAuxHead(nn.Module):
    """The auxiliary head of DGL / TRGL: conv3x3 -> ReLU -> average pooling -> BatchNorm -> linear.

    A training batch that pools to one value per channel (a batch of one row with `pool_size=1`, e.g. the last batch
    of an epoch) trains too: its BatchNorm uses the running statistics and leaves them unchanged (see
    [`PooledBatchNorm2d`]), as a stage exported from this head does in eval mode.

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
        self.norm = PooledBatchNorm2d(channels)
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


def masked_mean(hidden_state: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the token states over the positions the attention mask keeps (every position without a mask).

    Args:
        hidden_state (`torch.Tensor`): `(batch, length, hidden)`.
        attention_mask (`torch.Tensor`, *optional*): `(batch, length)`, 1 for real tokens, 0 for padding.

    Returns:
        `torch.Tensor`: `(batch, hidden)`.
    """
    if attention_mask is None:
        return hidden_state.mean(dim=1)
    weights = attention_mask.to(hidden_state.dtype).unsqueeze(-1)
    return (hidden_state * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class MeanPoolHead(nn.Module):
    """Mean of the token states over the attention mask -> LayerNorm -> dropout -> linear: a sequence classifier
    that reads every token, where the native head reads one (BERT's [CLS], nearly constant across sentences in the
    first layers of a pretrained encoder). This library's extension, not the paper's head.

    Args:
        hidden_size (`int`): width of the token states it reads.
        num_labels (`int`): number of outputs.
        dropout (`float`, *optional*, defaults to 0.1): dropout before the linear layer.
        layer_norm_eps (`float`, *optional*, defaults to 1e-12): epsilon of the LayerNorm.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float = 0.1, layer_norm_eps: float = 1e-12):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(
        self, hidden_state: torch.Tensor, attention_mask: torch.Tensor | None = None, **unused: object
    ) -> torch.Tensor:
        pooled = masked_mean(hidden_state, attention_mask)
        return self.classifier(self.dropout(self.norm(pooled)))
