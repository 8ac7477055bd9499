"""RegNet (X and Y blocks): ResNet's cutter with the native head by default; the fused BatchNorm energy is exact."""

import pytest
import torch
from torch import nn
from transformers import RegNetConfig, RegNetForImageClassification

from trgl_hf import TRGLConfig, TRGLModel, TRGLStageForImageClassification

from .cases_vision import REGNET


def tiny_regnet(layer_type: str) -> RegNetForImageClassification:
    torch.manual_seed(0)
    return RegNetForImageClassification(RegNetConfig(**dict(REGNET, layer_type=layer_type), num_labels=3))


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_transport_is_each_branch_and_the_fused_energy_trains_like_a_copy(layer_type, monkeypatch):
    model = TRGLModel.from_base(tiny_regnet(layer_type), TRGLConfig(split=[1, 3], tau=0.5)).train()
    assert model.config.family == "regnet" and model.config.aux_head == "linear"
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # away from the identity so the energy depends on every parameter
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    pixel_values, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    blocks = [block for stage in model.backbone.encoder.stages for block in stage.layers]
    branches = []
    handles = [block.layer.register_forward_hook(lambda m, a, output: branches.append(output.detach().clone()))
               for block in blocks]  # fmt: skip
    parameters = [p for p in model.parameters() if p.requires_grad]

    def loss_and_gradients():
        steps = list(model.iter_modules(pixel_values=pixel_values, labels=labels))
        loss = sum(step.loss for step in steps)
        return [step.transport.detach() for step in steps], torch.autograd.grad(loss, parameters, allow_unused=True)

    fused, fused_grads = loss_and_gradients()
    for handle in handles:
        handle.remove()
    energies = [branch.pow(2).mean() for branch in branches]
    torch.testing.assert_close(fused, [energies[0], sum(energies[1:])], rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(model.adapter, "_final_normalization", lambda block, energy: None)
    copied, copy_grads = loss_and_gradients()
    torch.testing.assert_close(fused, copied)
    assert sum(grad is not None for grad in copy_grads) == len(parameters)
    for fused_grad, copy_grad in zip(fused_grads, copy_grads):
        torch.testing.assert_close(fused_grad, copy_grad, rtol=1e-4, atol=1e-6)


def test_the_conv_head_is_still_offered(tmp_path):
    model = TRGLModel.from_base(tiny_regnet("y"), TRGLConfig(num_modules=2, aux_head="conv", head_pool_size=2)).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = list(model.iter_modules(pixel_values=pixel_values))[0].logits
    stage = model.export_stage(1)
    assert isinstance(stage, TRGLStageForImageClassification)
    with torch.no_grad():
        torch.testing.assert_close(stage(pixel_values=pixel_values).logits, logits)
