"""Mixtures of experts: `output_router_logits=True` (the task model adds the routers' load-balancing loss) is refused
by name, since the module losses would silently drop it; the default (False) trains (`test_registry.py`)."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from trgl_hf import TRGLConfig, TRGLModel

from .cases_mixtures import MIXTURES_CASES


@pytest.mark.parametrize("class_name", sorted(MIXTURES_CASES))
def test_router_aux_loss_is_refused_by_name(class_name):
    config_name, kwargs, *_ = MIXTURES_CASES[class_name]
    config = getattr(tf, config_name)(**kwargs, output_router_logits=True, router_aux_loss_coef=0.5)
    torch.manual_seed(0)
    model = getattr(tf, class_name)(config)
    with pytest.raises(ValueError, match=rf"{class_name}.*output_router_logits=True.*router_aux_loss_coef"):
        TRGLModel.from_base(model, TRGLConfig(num_modules=2))
