"""An exported TRGL stage: truncated backbone + auxiliary head, loadable with `trust_remote_code=True`.

Self-contained (torch, transformers and sibling files only), so it works without trgl_hf installed.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention, SequenceClassifierOutput
from transformers.utils import ModelOutput

from .aux_heads import MeanPoolHead, build_conv_feature_head
from .configuration_cifar_resnet import CifarResNetConfig
from .configuration_trgl_stage import TRGLStageConfig
from .modeling_cifar_resnet import CifarResNetModel


def build_backbone(backbone_config: dict, backbone_kwargs: dict | None = None) -> nn.Module:
    """Build the truncated backbone described by a configuration dictionary (and the model class's keyword
    arguments, e.g. `add_pooling_layer=False`)."""
    settings = dict(backbone_config)
    model_type = settings.pop("model_type")
    if model_type == CifarResNetConfig.model_type:
        return CifarResNetModel(CifarResNetConfig(**settings))
    return AutoModel.from_config(AutoConfig.for_model(model_type, **settings), **(backbone_kwargs or {}))


TEXT_INPUTS = ("token_type_ids", "position_ids", "inputs_embeds")
"""Keyword arguments a text stage passes on to its backbone besides `input_ids` and `attention_mask`."""
OUTPUT_FLAGS = ("output_hidden_states", "output_attentions", "return_dict")
"""Keyword arguments a [`TRGLStageModel`] passes on to its backbone (what its base-model output holds)."""


class TRGLStagePreTrainedModel(PreTrainedModel):
    """Common base of the stage classes: configuration, no weight initialisation (weights come from the training
    run), and an `AutoModel` entry in the `auto_map` of every saved folder, so
    `AutoModel.from_pretrained(stage, trust_remote_code=True)` gives the [`TRGLStageModel`] of any stage."""

    config_class = TRGLStageConfig
    base_model_prefix = "trgl_stage"

    def _init_weights(self, module: nn.Module) -> None:
        """Weights come from the training run; nothing to initialise."""

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`; a class registered for remote code also names [`TRGLStageModel`] as
        the `AutoModel` of the saved folder (transformers writes only the class's own Auto class)."""
        if self.is_remote_code():
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map["AutoModel"] = f"{__name__.rpartition('.')[2]}.{TRGLStageModel.__name__}"
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)


class TRGLStageModel(TRGLStagePreTrainedModel):
    """The truncated backbone of an exported stage (modules 1..k) without its head: what
    `AutoModel.from_pretrained(stage)` gives, as it gives the base model (e.g. `BertModel`, `ResNetModel`) of a native
    checkpoint. Its output is the backbone's (`last_hidden_state`: the output of module k, and what the backbone adds,
    e.g. a ResNet's `pooler_output`); the head's weights in the folder are not loaded.
    """

    _keys_to_ignore_on_load_unexpected = [r"^head\."]

    def __init__(self, config: TRGLStageConfig):
        super().__init__(config)
        self.main_input_name = "input_ids" if config.aux_head == "mean" else "pixel_values"
        self.backbone = build_backbone(config.backbone_config, config.backbone_kwargs)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **kwargs,
    ) -> ModelOutput:
        flags = {k: v for k, v in kwargs.items() if k in OUTPUT_FLAGS}
        if self.main_input_name == "pixel_values":
            return self.backbone(pixel_values, **flags)
        inputs = {k: v for k, v in kwargs.items() if k in TEXT_INPUTS}
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs, **flags)


class TRGLStageForImageClassification(TRGLStagePreTrainedModel):
    """Modules 1..k of a TRGL run with head k, as one image classifier."""

    main_input_name = "pixel_values"

    def __init__(self, config: TRGLStageConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.backbone_config)
        self.head = build_conv_feature_head(
            config.aux_head, config.head_channels, config.num_labels, config.head_pool_size
        )
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutputWithNoAttention:
        hidden_state = self.backbone(pixel_values).last_hidden_state
        logits = self.head(hidden_state)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)


def sequence_classification_loss(config: TRGLStageConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss of transformers' `*ForSequenceClassification` models for `problem_type`; when it is unset, decided
    once from `num_labels` as trgl_hf trains (1: regression, else single-label), not from the labels' dtype."""
    problem_type = config.problem_type or ("regression" if config.num_labels == 1 else "single_label_classification")
    if problem_type == "regression":
        if config.num_labels == 1:
            return nn.functional.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
        return nn.functional.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return nn.functional.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))


class TRGLStageForSequenceClassification(TRGLStagePreTrainedModel):
    """Modules 1..k of a TRGL run on a text encoder with its mean-pooling head k, as one sequence classifier."""

    main_input_name = "input_ids"

    def __init__(self, config: TRGLStageConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.backbone_config, config.backbone_kwargs)
        if config.aux_head != "mean":
            raise ValueError(f"A sequence-classification stage has a 'mean' head, got {config.aux_head!r}.")
        self.head = MeanPoolHead(config.head_channels, config.num_labels, config.head_dropout,
                                 config.head_layer_norm_eps)  # fmt: skip
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        inputs = {k: v for k, v in kwargs.items() if k in TEXT_INPUTS}
        hidden_state = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        logits = self.head(hidden_state, attention_mask)
        loss = sequence_classification_loss(self.config, logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
