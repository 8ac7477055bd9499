"""Vision models of the registry (ViT and its relatives, Swin, ConvNeXt, ResNets): one `ArchitectureSpec` per
family."""

from __future__ import annotations

from ..bit import BitCutter
from ..hierarchical import FocalNetCutter, PvtV2Cutter, focalnet_layout, pvt_v2_tail
from ..resnet import RegNetCutter, ResNetCutter
from ..spec import ArchitectureSpec, StreamPoints, norm_then_first_token, norm_then_pooler
from ..staged import ConvNextCutter, SwinCutter, convnext_tail, swin_tail
from ..transformer import TransformerCutter
from .common import CLASSIFICATION

VIT_LIKE = dict(
    adapter=TransformerCutter,
    blocks="layers",
    layout=StreamPoints(("layernorm_after",)),
    tail_names=("layernorm", "pooler"),
    tail=norm_then_pooler("layernorm"),
    penalised="attention and MLP branches (the stream's change across each sub-layer)",
    fixed_image_size=True,
)
"""ViT's block structure: pre-norm attention then MLP, a final LayerNorm and pooler; a fixed image size."""

PVT_V2 = ArchitectureSpec(
    "PVT-v2", ("pvt_v2",), PvtV2Cutter, {"PvtV2ForImageClassification": CLASSIFICATION},
    layout=StreamPoints(("layer_norm_2",)), tail=pvt_v2_tail,
    penalised="attention (spatial reduction) and convolutional MLP branches after drop path; each stage's patch "
    "embedding and closing LayerNorm are not penalised",
)  # fmt: skip
"""PVT-v2 (`PvtV2Config` stores `image_size` as a pair; `TRGLModel.from_base` takes its side when square)."""

VISION = (
    ArchitectureSpec("ViT", ("vit",), classes={"ViTForImageClassification": CLASSIFICATION}, **VIT_LIKE),
    ArchitectureSpec("DeiT", ("deit",), classes={"DeiTForImageClassification": CLASSIFICATION}, **VIT_LIKE),
    ArchitectureSpec("ViT-MSN", ("vit_msn",), classes={"ViTMSNForImageClassification": CLASSIFICATION}, **VIT_LIKE),
    ArchitectureSpec(
        "BEiT", ("beit",), TransformerCutter, {"BeitForImageClassification": CLASSIFICATION},
        blocks="layers", layout=StreamPoints(("layernorm_after",)), tail_names=("layernorm", "pooler"),
        tail=norm_then_pooler("layernorm"), fixed_image_size=True,
        penalised="attention and MLP branches after layer scale and drop path (the stream's change across each "
        "sub-layer); a shared relative position bias trains with the first module",
    ),
    ArchitectureSpec(
        "Data2Vec-Vision", ("data2vec-vision",), TransformerCutter,
        {"Data2VecVisionForImageClassification": CLASSIFICATION},
        blocks="encoder.layer", layout=StreamPoints(("layernorm_after",)), tail_names=("layernorm", "pooler"),
        tail=norm_then_pooler("layernorm"), fixed_image_size=True,
        penalised="attention and MLP branches after layer scale and drop path (the stream's change across each "
        "sub-layer); a shared relative position bias trains with the first module",
    ),
    ArchitectureSpec(
        "DINOv2", ("dinov2",), TransformerCutter, {"Dinov2ForImageClassification": CLASSIFICATION},
        blocks="encoder.layer", layout=StreamPoints(("norm2",)), tail_names=("layernorm",),
        tail=norm_then_first_token("layernorm"),
        penalised="attention and MLP branches after layer scale (the stream's change across each sub-layer)",
    ),
    ArchitectureSpec(
        "DINOv2 with registers", ("dinov2_with_registers",), TransformerCutter,
        {"Dinov2WithRegistersForImageClassification": CLASSIFICATION},
        blocks="encoder.layer", layout=StreamPoints(("norm2",)), tail_names=("layernorm",),
        tail=norm_then_first_token("layernorm"),
        penalised="attention and MLP branches after layer scale (the stream's change across each sub-layer); "
        "the register tokens are part of the stream",
    ),
    ArchitectureSpec(
        "Swin", ("swin",), SwinCutter, {"SwinForImageClassification": CLASSIFICATION},
        layout=StreamPoints(("layernorm_after",)), tail_names=("layernorm", "pooler"), tail=swin_tail,
        penalised="attention and MLP branches; patch merging is not penalised",
    ),
    ArchitectureSpec(
        "Swinv2", ("swinv2",), SwinCutter, {"Swinv2ForImageClassification": CLASSIFICATION},
        layout=StreamPoints(("intermediate",)), tail_names=("layernorm", "pooler"), tail=swin_tail,
        penalised="attention and MLP branches after their post-norms; patch merging is not penalised",
    ),
    ArchitectureSpec(
        "FocalNet", ("focalnet",), FocalNetCutter, {"FocalNetForImageClassification": CLASSIFICATION},
        layout=focalnet_layout, tail_names=("layernorm", "pooler"), tail=swin_tail,
        penalised="focal modulation and MLP branches after layer scale and drop path; the patch embedding between "
        "stages is not penalised",
    ),
    PVT_V2,
    ArchitectureSpec(
        "ConvNeXt", ("convnext",), ConvNextCutter, {"ConvNextForImageClassification": CLASSIFICATION},
        tail_names=("layernorm",), tail=convnext_tail,
        penalised="each block's branch after layer scale; stem and downsampling layers are not penalised",
    ),
    ArchitectureSpec(
        "ConvNeXt V2", ("convnextv2",), ConvNextCutter, {"ConvNextV2ForImageClassification": CLASSIFICATION},
        tail_names=("layernorm",), tail=convnext_tail,
        penalised="each block's branch; stem and downsampling layers are not penalised",
    ),
    ArchitectureSpec(
        "ResNet", ("resnet",), ResNetCutter, {"ResNetForImageClassification": CLASSIFICATION},
        penalised="each block's convolutional branch, downsampling blocks included (fused with the branch's last "
        "BatchNorm: recomputed in backward, nothing kept); the stem is not",
    ),
    ArchitectureSpec(
        "CIFAR ResNet", ("cifar_resnet",), ResNetCutter, {"CifarResNetForImageClassification": CLASSIFICATION},
        penalised="each block's convolutional branch, downsampling blocks included; the stem is not",
    ),
    ArchitectureSpec(
        "RegNet", ("regnet",), RegNetCutter, {"RegNetForImageClassification": CLASSIFICATION},
        penalised="each block's convolutional branch (squeeze-and-excitation included), downsampling blocks included "
        "(fused with the branch's last BatchNorm); the stem is not",
    ),
    ArchitectureSpec(
        "BiT", ("bit",), BitCutter, {"BitForImageClassification": CLASSIFICATION},
        tail_names=("norm", "pooler"), tail=norm_then_pooler("norm"),
        penalised="each block's branch after drop path (pre-activation or bottleneck), downsampling blocks included; "
        "the stem is not",
    ),
)  # fmt: skip
