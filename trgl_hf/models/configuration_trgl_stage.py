"""Configuration of an exported TRGL stage whose auxiliary head has no native equivalent.

Self-contained (transformers only): copied next to stage checkpoints that load with `trust_remote_code`.
"""

from __future__ import annotations

from transformers import PreTrainedConfig


class TRGLStageConfig(PreTrainedConfig):
    r"""
    Configuration of a [`TRGLStageForImageClassification`] or [`TRGLStageForSequenceClassification`]: the first
    modules of a greedily trained network (a truncated backbone) followed by the auxiliary head of the last of them.

    Args:
        backbone_config (`dict`, *optional*):
            `to_dict()` of the truncated backbone's configuration (it carries its own `model_type`).
        backbone_kwargs (`dict`, *optional*):
            Keyword arguments of the backbone class (e.g. `{"add_pooling_layer": False}`: a mean head reads no
            pooler).
        aux_head (`str`, *optional*, defaults to `"conv"`):
            Kind of auxiliary head: `"conv"` or `"linear"` (images), `"mean"` (token sequences).
        head_pool_size (`int`, *optional*, defaults to 2):
            Pooled side of the `"conv"` head.
        head_channels (`int`, *optional*, defaults to 16):
            Channels of the feature map (or width of the token states) the head reads.
        head_dropout (`float`, *optional*, defaults to 0.1):
            Dropout of the `"mean"` head before its linear layer.
        head_layer_norm_eps (`float`, *optional*, defaults to 1e-12):
            Epsilon of the `"mean"` head's LayerNorm.
        stage_index (`int`, *optional*, defaults to 1):
            Which module's head this stage ends with (1-based).
        num_stages (`int`, *optional*, defaults to 1):
            Number of modules K of the run the stage comes from.
    """

    model_type = "trgl_stage"

    backbone_config: dict | None = None
    backbone_kwargs: dict | None = None
    aux_head: str = "conv"
    head_pool_size: int = 2
    head_channels: int = 16
    head_dropout: float = 0.1
    head_layer_norm_eps: float = 1e-12
    stage_index: int = 1
    num_stages: int = 1
