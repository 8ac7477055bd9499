"""BEiT and Data2Vec-Vision: layer scale (`lambda_1`, `lambda_2`), relative position bias (per layer or shared by
every layer), mean pooling head; the transport term is what each branch adds, after layer scale and drop path.

The conformance rows of `cases_vision.py` run with layer scale off (the branches are then module outputs); here the
ground truth multiplies the branch modules' outputs by the block's own `lambda_1` / `lambda_2`.
"""

import pytest
import torch
import transformers as tf
from transformers import AutoModelForImageClassification

from trgl_hf import TRGLConfig, TRGLModel

from .cases_common import VIT
from .drop_path import drop_path_outputs

FAMILIES = {
    "beit": ("BeitConfig", "BeitForImageClassification", "mlp", "layers"),
    "data2vec": ("Data2VecVisionConfig", "Data2VecVisionForImageClassification", "output", "encoder.layer"),
}
BIAS = {"per-layer": dict(use_relative_position_bias=True), "shared": dict(use_shared_relative_position_bias=True)}


def build(family: str, bias: str = "shared", mean_pooling: bool = True, **settings):
    config_name, class_name, _, _ = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(tf, config_name)(**VIT, **BIAS[bias], layer_scale_init_value=0.1, use_mean_pooling=mean_pooling,
                                      num_labels=3, **settings)  # fmt: skip
    config._attn_implementation = "eager"
    model = getattr(tf, class_name)(config)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # non-trivial weights: zero-initialised bias tables and small layer scales would hide bugs
        for name, param in model.named_parameters():
            if "embed" not in name:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def blocks_of(model, family: str):
    return list(model.base_model.get_submodule(FAMILIES[family][3]))


def layer_scaled_energies(model, family: str, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """Per block: mean(r ** 2) of lambda_1 * attention output + mean(r ** 2) of lambda_2 * MLP output (eval mode)."""
    mlp_name = FAMILIES[family][2]
    outputs, handles = [], []
    for block in blocks_of(model, family):
        outputs.append([])

        def record(scale, store=outputs[-1]):
            return lambda module, args, output: store.append(
                scale * (output[0] if isinstance(output, tuple) else output)
            )

        handles.append(block.attention.register_forward_hook(record(block.lambda_1)))
        handles.append(block.get_submodule(mlp_name).register_forward_hook(record(block.lambda_2)))
    with torch.no_grad():
        model(pixel_values=pixel_values)
    for handle in handles:
        handle.remove()
    assert all(len(branches) == 2 for branches in outputs)
    return [sum(branch.pow(2).mean() for branch in branches) for branches in outputs]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("bias", sorted(BIAS))
def test_transport_is_the_layer_scaled_branch_and_stages_reproduce_the_heads(family, bias, tmp_path):
    base = build(family, bias, mean_pooling=bias == "shared").eval()
    pixel_values = torch.randn(2, 3, 16, 16)
    expected_blocks = layer_scaled_energies(base, family, pixel_values)
    with torch.no_grad():
        base_logits = base(pixel_values=pixel_values).logits
    model = TRGLModel.from_base(base, TRGLConfig(split=[1, 3])).eval()
    with torch.no_grad():
        steps = list(model.iter_modules(pixel_values=pixel_values))
    for step, expected in zip(steps, [expected_blocks[0], sum(expected_blocks[1:])]):
        torch.testing.assert_close(step.transport, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(steps[-1].logits, base_logits, rtol=1e-5, atol=1e-5)
    model.export_stage(1).save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(base) and loaded.config.num_hidden_layers == 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, steps[0].logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_drop_path_and_dropout_in_train_mode_penalise_what_is_added(family):
    base = build(family, drop_path_rate=0.6, hidden_dropout_prob=0.2)
    model = TRGLModel.from_base(base, TRGLConfig(split=[2, 2], tau=1.0)).train()
    with drop_path_outputs(model) as added:  # what each branch adds (the drop path runs once per branch)
        torch.manual_seed(3)
        steps = list(model.iter_modules(pixel_values=torch.randn(4, 3, 16, 16), labels=torch.tensor([0, 1, 2, 0])))
    assert len(added) == 2 * len(model.adapter.blocks)
    dropped = sum(int((branch.flatten(1) == 0).all(1).sum()) for branch in added[2:])
    assert 0 < dropped < 4 * (len(added) - 2)  # some samples' branches were dropped, not all
    energies = [branch.pow(2).mean() for branch in added]
    for step, expected in zip(steps, [sum(energies[:4]), sum(energies[4:])]):
        torch.testing.assert_close(step.transport.detach(), expected, rtol=1e-5, atol=1e-7)
    sum(step.loss for step in steps).backward()
    assert all(p.grad is not None for p in model.module_parameters(1))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_shared_relative_position_bias_trains_with_the_first_module(family):
    base = build(family, "shared")
    model = TRGLModel.from_base(base, TRGLConfig(split=[2, 2]))
    shared = next(module for name, module in model.backbone.named_modules()
                  if name.endswith(("shared_position_bias", "encoder.relative_position_bias")))  # fmt: skip
    table = shared.relative_position_bias_table
    owners = [index for index in range(2) if any(p is table for p in model.module_parameters(index))]
    assert owners == [0]
    steps = list(model.iter_modules(pixel_values=torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 2])))
    (gradient,) = torch.autograd.grad(steps[0].loss, [table])
    assert gradient.abs().sum() > 0
    assert torch.autograd.grad(steps[1].loss, [table], allow_unused=True)[0] is None  # not through module 2
