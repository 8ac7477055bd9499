"""PVT-v2: exact branches across stages, each stage's patch embedding
and closing LayerNorm trained with the next stage's first block, native truncated stages."""

import pytest
import torch
from transformers import AutoModelForImageClassification, PvtV2Config, PvtV2ForImageClassification

from trgl_hf import TRGLConfig, TRGLModel
from trgl_hf.modeling.architectures import registry
from trgl_hf.modeling.architectures.families.vision import PVT_V2

from .cases_vision import PVT_V2 as SETTINGS
from .drop_path import drop_path_outputs


def test_pvt_v2_is_registered_and_its_pair_image_size_is_read_as_a_side():
    assert registry.REGISTRY["pvt_v2"] is PVT_V2
    model = TRGLModel.from_base(tiny_pvt(image_size=[32, 32]), TRGLConfig(num_modules=2))
    assert model.config.image_size == 32


def tiny_pvt(**settings) -> PvtV2ForImageClassification:
    torch.manual_seed(0)
    model = PvtV2ForImageClassification(PvtV2Config(**SETTINGS, num_labels=3, **settings))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def branch_energies(model: PvtV2ForImageClassification, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Per block, from hooks on the uncut model: mean(r ** 2) of the attention output plus that of the MLP output."""
    outputs, handles = [], []
    for stage in model.pvt_v2.encoder.layers:
        for block in stage.blocks:
            outputs.append([])
            for module in (block.attention, block.mlp):
                handles.append(module.register_forward_hook(
                    lambda m, a, output, store=outputs[-1]: store.append(output[0] if isinstance(output, tuple)
                                                                         else output)))  # fmt: skip
    with torch.no_grad():
        model(pixel_values=pixel_values)
    for handle in handles:
        handle.remove()
    return [sum(branch.pow(2).mean() for branch in branches) for branches in outputs]


@pytest.mark.parametrize("split", [[1, 3], [2, 1, 1], [3, 1]])
def test_transport_is_exact_and_every_stage_reproduces_its_head(split, tmp_path):
    base = tiny_pvt().eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    energies = branch_energies(base, pixel_values)
    with torch.no_grad():
        base_logits = base(pixel_values=pixel_values).logits
    model = TRGLModel.from_base(base, TRGLConfig(split=split, image_size=32)).eval()
    with torch.no_grad():
        steps = list(model.iter_modules(pixel_values=pixel_values))
    ends = [sum(split[: k + 1]) for k in range(len(split))]
    for step, start, end in zip(steps, [0] + ends, ends):
        torch.testing.assert_close(step.transport, sum(energies[start:end]), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(steps[-1].logits, base_logits, rtol=1e-5, atol=1e-5)
    for stage, end in enumerate(ends, start=1):
        model.export_stage(stage).save_pretrained(tmp_path / str(stage))
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / str(stage)).eval()
        assert isinstance(loaded, PvtV2ForImageClassification) and sum(loaded.config.depths) == end
        with torch.no_grad():
            torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, steps[stage - 1].logits,
                                       rtol=1e-5, atol=1e-5)  # fmt: skip


def test_the_transition_trains_with_the_next_stage_and_drop_path_is_penalised_as_added():
    model = TRGLModel.from_base(tiny_pvt(drop_path_rate=0.8), TRGLConfig(split=[2, 2], image_size=32)).train()
    stages = model.backbone.encoder.layers
    second = {id(p) for p in model.module_parameters(1)}
    assert {id(p) for p in stages[0].layer_norm.parameters()} <= second  # stage 1's closing norm: a transition
    assert {id(p) for p in stages[1].patch_embedding.parameters()} <= second
    owned = {id(p) for index in range(2) for p in model.module_parameters(index)}
    assert not {id(p) for p in stages[2].layer_norm.parameters()} & owned  # the last norm: each head has its copy
    with drop_path_outputs(model) as added:  # what each branch adds (the drop path runs once per branch)
        torch.manual_seed(3)
        steps = list(model.iter_modules(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 0])))
    assert len(added) == 8 and any((branch.flatten(1) == 0).all(1).any() for branch in added)
    energies = [branch.pow(2).mean() for branch in added]
    for step, expected in zip(steps, [sum(energies[:4]), sum(energies[4:])]):
        torch.testing.assert_close(step.transport.detach(), expected, rtol=1e-5, atol=1e-7)
