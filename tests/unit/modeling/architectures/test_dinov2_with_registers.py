"""DINOv2 with registers: the register tokens ride in the stream (the head skips them); drop path in train mode."""

import torch
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification

from trgl_hf import TRGLConfig, TRGLModel

from .cases_common import VIT
from .drop_path import drop_path_outputs


def test_drop_path_in_train_mode_penalises_what_is_added():
    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(**VIT, mlp_ratio=2, num_register_tokens=2, drop_path_rate=0.6,
                                       hidden_dropout_prob=0.2, num_labels=3)  # fmt: skip
    model = TRGLModel.from_base(Dinov2WithRegistersForImageClassification(config), TRGLConfig(split=[2, 2])).train()
    with drop_path_outputs(model) as added:  # what each branch adds (the drop path runs once per branch)
        torch.manual_seed(3)
        steps = list(model.iter_modules(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.tensor([0, 1, 2, 0])))
    assert len(added) == 2 * len(model.adapter.blocks)
    assert any((branch.flatten(1) == 0).all(1).any() for branch in added)  # some sample's branch was dropped
    energies = [branch.pow(2).mean() for branch in added]
    for step, expected in zip(steps, [sum(energies[:4]), sum(energies[4:])]):
        torch.testing.assert_close(step.transport.detach(), expected, rtol=1e-5, atol=1e-7)
