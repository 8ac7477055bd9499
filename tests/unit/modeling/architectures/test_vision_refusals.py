"""Vision models refused by name, with the reason (`families/refusals.py`)."""

import pytest
from transformers import HieraConfig, HieraForImageClassification

from trgl_hf import TRGLConfig, TRGLModel


def test_hiera_is_refused_naming_why():
    config = HieraConfig(embed_dim=8, image_size=[32, 32], patch_size=[3, 3], patch_stride=[2, 2],
                         patch_padding=[1, 1],
                         depths=[1, 1], num_heads=[1, 1], num_query_pool=1, masked_unit_size=[8, 8],
                         masked_unit_attention=[True, False])  # fmt: skip
    with pytest.raises(ValueError, match="HieraForImageClassification.*unrolls its tokens.*number of stages"):
        TRGLModel.from_base(HieraForImageClassification(config), TRGLConfig(num_modules=2))
