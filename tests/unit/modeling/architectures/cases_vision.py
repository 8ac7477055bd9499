"""Vision models of the registry's conformance tests (`test_registry.py`), one row per task class:
class name -> (config class, config kwargs, ground-truth branch modules per block[, how branches combine]).

Ground truth: the output of each named submodule (first element of a tuple) is exactly the tensor its branch adds
to the residual stream; "sum" adds them into one stream update (parallel attention + MLP).
"""

from .cases_common import CONVNEXT, SWIN, VIT

PVT_V2 = dict(depths=[2, 1, 1], hidden_sizes=[8, 16, 16], num_attention_heads=[1, 2, 2], sr_ratios=[2, 1, 1],
              mlp_ratios=[2, 2, 2], patch_sizes=[3, 3, 3], strides=[2, 2, 2], num_encoder_blocks=3)  # fmt: skip
FOCALNET = dict(
    image_size=32, patch_size=2, embed_dim=8, depths=[2, 1, 1], focal_levels=[2, 2, 2], focal_windows=[3, 3, 3]
)
REGNET = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2], groups_width=4, layer_type="y")
BIT = dict(embedding_size=8, hidden_sizes=[16, 32], depths=[2, 2], num_groups=4)

VISION_CASES = {
    "ViTForImageClassification": ("ViTConfig", VIT, ("attention", "mlp")),
    "DeiTForImageClassification": ("DeiTConfig", VIT, ("attention", "mlp")),
    "Dinov2ForImageClassification": ("Dinov2Config", dict(VIT, mlp_ratio=2), ("layer_scale1", "layer_scale2")),
    "Dinov2WithRegistersForImageClassification": ("Dinov2WithRegistersConfig", dict(VIT, mlp_ratio=2, num_register_tokens=2), ("layer_scale1", "layer_scale2")),
    "ViTMSNForImageClassification": ("ViTMSNConfig", VIT, ("attention", "mlp")),
    # layer scale off (lambda = 1.0): the branches are module outputs; test_beit.py checks layer scale and drop path
    "BeitForImageClassification": ("BeitConfig", dict(VIT, layer_scale_init_value=0.0, use_relative_position_bias=True), ("attention", "mlp")),
    "Data2VecVisionForImageClassification": ("Data2VecVisionConfig", dict(VIT, layer_scale_init_value=0.0, use_shared_relative_position_bias=True), ("attention", "output")),
    "SwinForImageClassification": ("SwinConfig", SWIN, ("drop_path", "mlp")),
    "Swinv2ForImageClassification": ("Swinv2Config", dict(SWIN, pretrained_window_sizes=[0, 0, 0]), ("layernorm_before", "layernorm_after")),
    # layer scale off (gamma = 1.0): the branches are module outputs; test_focalnet.py checks layer scale and drop path
    "FocalNetForImageClassification": ("FocalNetConfig", FOCALNET, ("modulation", "mlp")),
    "PvtV2ForImageClassification": ("PvtV2Config", PVT_V2, ("attention", "mlp")),
    "ConvNextForImageClassification": ("ConvNextConfig", CONVNEXT, ("drop_path",)),
    "ConvNextV2ForImageClassification": ("ConvNextV2Config", CONVNEXT, ("drop_path",)),
    "ResNetForImageClassification": (None, None, ("layer",)),
    "CifarResNetForImageClassification": (None, None, ("layer",)),
    "RegNetForImageClassification": ("RegNetConfig", REGNET, ("layer",)),
    "BitForImageClassification": ("BitConfig", BIT, ("drop_path",)),
}  # fmt: skip
