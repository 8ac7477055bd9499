"""FocalNet: layer scale (`gamma_1`, `gamma_2`), pre- or post-layernorm, drop path in train mode; patch embeddings
between stages are not penalised. The conformance row of `cases_vision.py` runs without layer scale."""

import pytest
import torch
from transformers import AutoModelForImageClassification, FocalNetConfig, FocalNetForImageClassification

from trgl_hf import TRGLConfig, TRGLModel

from .cases_vision import FOCALNET
from .drop_path import drop_path_outputs


def tiny_focalnet(**settings) -> FocalNetForImageClassification:
    torch.manual_seed(0)
    config = FocalNetConfig(**FOCALNET, use_layerscale=True, layerscale_value=0.5, num_labels=3, **settings)
    model = FocalNetForImageClassification(config)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model


@pytest.mark.parametrize("post_layernorm", [False, True])
def test_transport_is_the_layer_scaled_branch_and_stages_reproduce_the_heads(post_layernorm, tmp_path):
    base = tiny_focalnet(use_post_layernorm=post_layernorm).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base_logits = base(pixel_values=pixel_values).logits
    model = TRGLModel.from_base(base, TRGLConfig(split=[1, 2, 1])).eval()
    with drop_path_outputs(model) as added, torch.no_grad():
        steps = list(model.iter_modules(pixel_values=pixel_values))
    energies = [branch.pow(2).mean() for branch in added]
    for step, expected in zip(steps, [sum(energies[:2]), sum(energies[2:6]), sum(energies[6:])]):
        torch.testing.assert_close(step.transport, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(steps[-1].logits, base_logits, rtol=1e-5, atol=1e-5)
    model.export_stage(2).save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, FocalNetForImageClassification) and loaded.config.depths == [2, 1]
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, steps[1].logits, rtol=1e-5, atol=1e-5)


def test_drop_path_in_train_mode_penalises_what_is_added():
    model = TRGLModel.from_base(tiny_focalnet(drop_path_rate=0.8, hidden_dropout_prob=0.1), TRGLConfig(split=[2, 2]))
    model.train()
    with drop_path_outputs(model) as added:
        torch.manual_seed(3)
        steps = list(model.iter_modules(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0])))
    assert len(added) == 8 and any((branch.flatten(1) == 0).all(1).any() for branch in added)
    energies = [branch.pow(2).mean() for branch in added]
    for step, expected in zip(steps, [sum(energies[:4]), sum(energies[4:])]):
        torch.testing.assert_close(step.transport.detach(), expected, rtol=1e-5, atol=1e-7)
    sum(step.loss for step in steps).backward()
    assert all(p.grad is not None for p in model.module_parameters(1))
