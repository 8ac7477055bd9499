"""PyTorch CIFAR-style ResNet (He et al. 2016, CIFAR variant: ResNet-20/32/44/56/110, option-A shortcuts).

The module layout mirrors transformers' `ResNet` (`transformers.models.resnet.modeling_resnet`): `embedder.embedder`
(conv layer with `convolution` / `normalization` / `activation`), `encoder.stages[i].layers[j]` (basic layers with
`shortcut`, `layer` and `activation`), `pooler` and `classifier`, so that code walking an HF ResNet walks this model.

Self-contained (torch and transformers only): copied next to checkpoints that load with `trust_remote_code`.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithNoAttention,
    BaseModelOutputWithPoolingAndNoAttention,
    ImageClassifierOutputWithNoAttention,
)

from .configuration_cifar_resnet import CifarResNetConfig


class CifarResNetConvLayer(nn.Module):
    """
    A `kernel_size x kernel_size` convolution (no bias, "same" padding) followed by batch normalization and an
    optional activation (`nn.Identity` when `activation` is `None`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        activation: str | None = "relu",
    ):
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        )
        self.normalization = nn.BatchNorm2d(out_channels)
        self.activation = ACT2FN[activation] if activation is not None else nn.Identity()

    def forward(self, hidden_state: Tensor) -> Tensor:
        hidden_state = self.convolution(hidden_state)
        hidden_state = self.normalization(hidden_state)
        hidden_state = self.activation(hidden_state)
        return hidden_state


class CifarResNetEmbeddings(nn.Module):
    """
    CIFAR ResNet embeddings (stem): a single 3x3 convolution with stride 1, batch normalization and activation. Unlike
    the ImageNet ResNet there is no max-pooling.
    """

    def __init__(self, config: CifarResNetConfig):
        super().__init__()
        self.embedder = CifarResNetConvLayer(
            config.num_channels, config.embedding_size, kernel_size=3, stride=1, activation=config.hidden_act
        )
        self.num_channels = config.num_channels

    def forward(self, pixel_values: Tensor) -> Tensor:
        num_channels = pixel_values.shape[1]
        if num_channels != self.num_channels:
            raise ValueError(
                "Make sure that the channel dimension of the pixel values match with the one set in the configuration."
            )
        return self.embedder(pixel_values)


class CifarResNetShortCut(nn.Module):
    """
    Parameter-free "option A" shortcut of He et al. (2016): subsample the input spatially with the block's stride and
    zero-pad the extra channels, half before and half after the input channels (for 16 -> 32 channels, 8 zero
    channels on each side, as in akamaster/pytorch_resnet_cifar10).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"An option-A shortcut cannot reduce the channel count ({in_channels} -> {out_channels})."
            )
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, input: Tensor) -> Tensor:
        hidden_state = input[:, :, :: self.stride, :: self.stride] if self.stride != 1 else input
        return F.pad(hidden_state, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


class CifarResNetBasicLayer(nn.Module):
    """
    A CIFAR ResNet basic block: two 3x3 convolutions (`layer`, the residual branch) added to the `shortcut` and
    followed by the activation. As in transformers' `ResNetBasicLayer`, the output of `layer` is exactly the residual
    branch (a forward hook on `layer` captures it) and the block computes `activation(layer(x) + shortcut(x))`.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, activation: str = "relu"):
        super().__init__()
        should_apply_shortcut = in_channels != out_channels or stride != 1
        self.shortcut = (
            CifarResNetShortCut(in_channels, out_channels, stride=stride) if should_apply_shortcut else nn.Identity()
        )
        self.layer = nn.Sequential(
            CifarResNetConvLayer(in_channels, out_channels, stride=stride, activation=activation),
            CifarResNetConvLayer(out_channels, out_channels, activation=None),
        )
        self.activation = ACT2FN[activation]

    def forward(self, hidden_state: Tensor) -> Tensor:
        residual = self.shortcut(hidden_state)
        hidden_state = self.layer(hidden_state)
        # out of place, so that a tensor captured by a hook on `self.layer` is not modified
        hidden_state = hidden_state + residual
        hidden_state = self.activation(hidden_state)
        return hidden_state


class CifarResNetStage(nn.Module):
    """
    A CIFAR ResNet stage: `depth` stacked basic layers, the first of which has stride `stride`.
    """

    def __init__(
        self,
        config: CifarResNetConfig,
        in_channels: int,
        out_channels: int,
        stride: int = 2,
        depth: int = 3,
    ):
        super().__init__()
        first_layer = CifarResNetBasicLayer(in_channels, out_channels, stride=stride, activation=config.hidden_act)
        self.layers = nn.Sequential(
            first_layer,
            *[
                CifarResNetBasicLayer(out_channels, out_channels, activation=config.hidden_act)
                for _ in range(depth - 1)
            ],
        )

    def forward(self, input: Tensor) -> Tensor:
        hidden_state = input
        for layer in self.layers:
            hidden_state = layer(hidden_state)
        return hidden_state


class CifarResNetEncoder(nn.Module):
    """
    The stages of a CIFAR ResNet. Stages with 0 blocks (truncated models) are not built.
    """

    def __init__(self, config: CifarResNetConfig):
        super().__init__()
        self.stages = nn.ModuleList([])
        in_channels = config.embedding_size
        for stage_idx, (out_channels, depth) in enumerate(zip(config.hidden_sizes, config.depths)):
            if depth <= 0:
                break
            # based on `downsample_in_first_stage` the first layer of the first stage may or may not downsample
            if stage_idx == 0:
                stride = 2 if config.downsample_in_first_stage else 1
            else:
                stride = 2
            self.stages.append(CifarResNetStage(config, in_channels, out_channels, stride=stride, depth=depth))
            in_channels = out_channels

    def forward(
        self, hidden_state: Tensor, output_hidden_states: bool = False, return_dict: bool = True
    ) -> BaseModelOutputWithNoAttention | tuple[Tensor, ...]:
        hidden_states = () if output_hidden_states else None

        for stage_module in self.stages:
            if output_hidden_states:
                hidden_states = hidden_states + (hidden_state,)

            hidden_state = stage_module(hidden_state)

        if output_hidden_states:
            hidden_states = hidden_states + (hidden_state,)

        if not return_dict:
            return tuple(v for v in [hidden_state, hidden_states] if v is not None)

        return BaseModelOutputWithNoAttention(
            last_hidden_state=hidden_state,
            hidden_states=hidden_states,
        )


class CifarResNetPreTrainedModel(PreTrainedModel):
    """
    An abstract class to handle weights initialization and a simple interface for downloading and loading pretrained
    models.
    """

    config_class = CifarResNetConfig
    config: CifarResNetConfig
    base_model_prefix = "resnet"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["CifarResNetConvLayer", "CifarResNetBasicLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # copied from the `reset_parameters` method of `class Linear(Module)` in `torch`.
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            if getattr(module, "num_batches_tracked", None) is not None:
                init.zeros_(module.num_batches_tracked)


class CifarResNetModel(CifarResNetPreTrainedModel):
    """
    The bare CIFAR ResNet outputting the last feature map and its global average pool.
    """

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        self.config = config
        self.embedder = CifarResNetEmbeddings(config)
        self.encoder = CifarResNetEncoder(config)
        self.pooler = nn.AdaptiveAvgPool2d((1, 1))
        # Initialize weights and apply final processing
        self.post_init()

    def forward(
        self,
        pixel_values: Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPoolingAndNoAttention | tuple[Tensor, ...]:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalized input images.
            output_hidden_states (`bool`, *optional*):
                Whether to return the input of every stage and the output of the last one.
            return_dict (`bool`, *optional*):
                Whether to return a [`~transformers.modeling_outputs.BaseModelOutputWithPoolingAndNoAttention`]
                instead of a plain tuple.

        Returns:
            [`~transformers.modeling_outputs.BaseModelOutputWithPoolingAndNoAttention`]: `last_hidden_state` of
            shape `(batch_size, output_channels, h, w)`, `pooler_output` of shape `(batch_size, output_channels, 1,
            1)` and, if requested, `hidden_states` (the stem output followed by the output of each stage).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        embedding_output = self.embedder(pixel_values)

        encoder_outputs = self.encoder(
            embedding_output, output_hidden_states=output_hidden_states, return_dict=return_dict
        )

        last_hidden_state = encoder_outputs[0]

        pooled_output = self.pooler(last_hidden_state)

        if not return_dict:
            return (last_hidden_state, pooled_output) + encoder_outputs[1:]

        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=last_hidden_state,
            pooler_output=pooled_output,
            hidden_states=encoder_outputs.hidden_states,
        )


class CifarResNetForImageClassification(CifarResNetPreTrainedModel):
    """
    CIFAR ResNet with an image classification head on top (a linear layer on top of the pooled features), e.g. for
    CIFAR-10.

    Example:

    ```python
    >>> import torch
    >>> from trgl_hf.models.configuration_cifar_resnet import CifarResNetConfig
    >>> from trgl_hf.models.modeling_cifar_resnet import CifarResNetForImageClassification

    >>> model = CifarResNetForImageClassification(CifarResNetConfig.from_depth(20, num_labels=10))
    >>> model(torch.randn(2, 3, 32, 32)).logits.shape
    torch.Size([2, 10])
    ```
    """

    def __init__(self, config: CifarResNetConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.resnet = CifarResNetModel(config)
        # classification head
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(config.output_channels, config.num_labels) if config.num_labels > 0 else nn.Identity(),
        )
        # initialize weights and apply final processing
        self.post_init()

    def forward(
        self,
        pixel_values: Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutputWithNoAttention | tuple[Tensor, ...]:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Normalized input images.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Labels for computing the image classification/regression loss. Indices should be in `[0, ...,
                config.num_labels - 1]`. If `config.num_labels > 1` a classification loss is computed
                (Cross-Entropy).
            output_hidden_states (`bool`, *optional*):
                Whether to return the hidden states of the backbone.
            return_dict (`bool`, *optional*):
                Whether to return a [`~transformers.modeling_outputs.ImageClassifierOutputWithNoAttention`] instead
                of a plain tuple.

        Returns:
            [`~transformers.modeling_outputs.ImageClassifierOutputWithNoAttention`]: `loss` (when `labels` is
            given), `logits` of shape `(batch_size, num_labels)` and, if requested, `hidden_states`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        outputs = self.resnet(pixel_values, output_hidden_states=output_hidden_states, return_dict=return_dict)

        pooled_output = outputs.pooler_output if return_dict else outputs[1]

        logits = self.classifier(pooled_output)

        loss = None

        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)

        if not return_dict:
            output = (logits,) + outputs[2:]
            return (loss,) + output if loss is not None else output

        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = [
    "CifarResNetBasicLayer",
    "CifarResNetConvLayer",
    "CifarResNetEmbeddings",
    "CifarResNetEncoder",
    "CifarResNetForImageClassification",
    "CifarResNetModel",
    "CifarResNetPreTrainedModel",
    "CifarResNetShortCut",
    "CifarResNetStage",
]
