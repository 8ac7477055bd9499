"""Swin: modules across stages, patch merging not penalised, exact branches, native truncated export."""

import pytest
import torch
from transformers import AutoModelForImageClassification, SwinConfig, SwinForImageClassification

from trgl_hf import TRGLConfig, TRGLModel


def tiny_swin():
    torch.manual_seed(0)
    config = SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2, 2], num_heads=[2, 2, 4],
                        window_size=4, num_labels=3)  # fmt: skip
    return SwinForImageClassification(config)


def test_swin_is_cut_by_its_own_adapter():
    model = TRGLModel.from_base(tiny_swin(), TRGLConfig(num_modules=3))
    assert model.config.family == "swin" and model.config.split == [2, 2, 2]
    assert model.config.module_output_shapes == [[16], [32], [64]]


def test_branches_match_block_outputs_and_merging_is_not_penalised():
    model = TRGLModel.from_base(tiny_swin(), TRGLConfig(split=[1, 3, 2])).eval()
    for param in model.backbone.parameters():
        param.data.add_(0.1 * torch.randn_like(param))
    records = []
    handles = []
    for block in model.adapter.blocks:
        handles.append(block.register_forward_hook(lambda m, a, o: records.append(("block", a[0], o[0]))))
        handles.append(block.mlp.register_forward_hook(lambda m, a, o: records.append(("mlp", None, o))))
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        steps = list(model.iter_modules(pixel_values=pixel_values))
    for handle in handles:
        handle.remove()
    energies = []
    for index in range(0, len(records), 2):
        (_, _, mlp_branch), (_, block_input, block_output) = records[index], records[index + 1]
        attention_branch = block_output - block_input - mlp_branch
        energies.append(attention_branch.pow(2).mean() + mlp_branch.pow(2).mean())
    expected = [energies[0], sum(energies[1:4]), sum(energies[4:])]
    for step, value in zip(steps, expected):
        torch.testing.assert_close(step.transport, value, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("split", [[2, 2, 2], [1, 3, 2], [3, 3]])
def test_every_stage_exports_as_a_native_truncated_swin(split, tmp_path):
    base = tiny_swin()
    model = TRGLModel.from_base(base, TRGLConfig(split=split)).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        steps = list(model.iter_modules(pixel_values=pixel_values))
        torch.testing.assert_close(steps[-1].logits, base.eval()(pixel_values=pixel_values).logits)
    for stage in range(1, len(split) + 1):
        model.export_stage(stage).save_pretrained(tmp_path / str(stage))
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / str(stage)).eval()
        assert isinstance(loaded, SwinForImageClassification)
        assert sum(loaded.config.depths) == sum(split[:stage])
        with torch.no_grad():
            torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, steps[stage - 1].logits)


def test_swin_gradients_stay_inside_modules():
    model = TRGLModel.from_base(tiny_swin(), TRGLConfig(num_modules=3)).train()
    params = list(model.parameters())
    for step in model.iter_modules(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 2])):
        own = set(map(id, model.module_parameters(step.index)))
        grads = torch.autograd.grad(step.loss, params, allow_unused=True)
        assert all(g is None or not g.any() for p, g in zip(params, grads) if id(p) not in own)
