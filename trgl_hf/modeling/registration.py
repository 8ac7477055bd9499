"""Register this library's model classes with transformers' Auto classes (in process and for the Hub)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification

from ..models.configuration_cifar_resnet import CifarResNetConfig
from ..models.configuration_trgl_stage import TRGLStageConfig
from ..models.modeling_cifar_resnet import CifarResNetForImageClassification, CifarResNetModel
from ..models.modeling_trgl_stage import (
    TRGLStageForImageClassification,
    TRGLStageForSequenceClassification,
    TRGLStageModel,
)
from .configuration_trgl import TRGLConfig
from .modeling_trgl import TRGLModel


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModel*` resolve `trgl`, `cifar_resnet` and `trgl_stage` checkpoints.

    Saved CIFAR ResNets and TRGL stages also carry their modeling files and an `auto_map`, so they load with
    `trust_remote_code=True` where trgl_hf is not installed; `AutoModel` gives a stage's truncated backbone
    ([`TRGLStageModel`]), as it gives the base model of a native checkpoint.
    """
    AutoConfig.register(TRGLConfig.model_type, TRGLConfig, exist_ok=True)
    AutoModel.register(TRGLConfig, TRGLModel, exist_ok=True)
    AutoConfig.register(CifarResNetConfig.model_type, CifarResNetConfig, exist_ok=True)
    AutoModel.register(CifarResNetConfig, CifarResNetModel, exist_ok=True)
    AutoModelForImageClassification.register(CifarResNetConfig, CifarResNetForImageClassification, exist_ok=True)
    AutoConfig.register(TRGLStageConfig.model_type, TRGLStageConfig, exist_ok=True)
    AutoModel.register(TRGLStageConfig, TRGLStageModel, exist_ok=True)
    AutoModelForImageClassification.register(TRGLStageConfig, TRGLStageForImageClassification, exist_ok=True)
    AutoModelForSequenceClassification.register(TRGLStageConfig, TRGLStageForSequenceClassification, exist_ok=True)
    for config_class in (CifarResNetConfig, TRGLStageConfig):
        config_class.register_for_auto_class()
    for model_class in (CifarResNetModel, TRGLStageModel):
        model_class.register_for_auto_class("AutoModel")
    for model_class in (CifarResNetForImageClassification, TRGLStageForImageClassification):
        model_class.register_for_auto_class("AutoModelForImageClassification")
    TRGLStageForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
