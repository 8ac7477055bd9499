"""The ResNet adapter on transformers' ResNet and on the CIFAR ResNet: blocks, exact transport term, bad input."""

import pytest
import torch
from torch import nn

from trgl_hf import TRGLConfig, TRGLModel
from trgl_hf.modeling.architectures.base import BlockState


def explicit_blocks(backbone):
    """Blocks by their documented attribute paths, independent of the adapter's probing."""
    return [block for stage in backbone.encoder.stages for block in stage.layers]


def independent_module_transports(model: TRGLModel, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    backbone = model.backbone
    blocks = explicit_blocks(backbone)
    hidden = backbone.embedder(pixel_values)
    totals, index = [], 0
    for size in model.config.split:
        total = torch.zeros(())
        for block in blocks[index : index + size]:
            branch = block.layer(hidden)
            total = total + (branch**2).sum() / branch.numel()
            hidden = block(hidden)
        totals.append(total)
        index += size
    return totals


@pytest.mark.parametrize("family", ["hf", "cifar"])
def test_transport_term_matches_independent_computation(family, make_hf_resnet, make_cifar_resnet):
    if family == "hf":
        base, pixel_values = make_hf_resnet(depths=(2, 2)), torch.randn(3, 3, 32, 32)
    else:
        base, pixel_values = make_cifar_resnet(num_channels=1, depths=(2, 2, 2)), torch.randn(3, 1, 8, 8)
    labels = torch.tensor([0, 1, 2])
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=3 if family == "cifar" else 2, tau=3.0))
    model.eval()
    with torch.no_grad():
        steps = list(model.iter_modules(pixel_values=pixel_values, labels=labels))
        expected = independent_module_transports(model, pixel_values)
    taus = model.config.module_taus()
    assert taus[0] == 1.5 and taus[-1] == 3.0
    for step, transport, tau in zip(steps, expected, taus):
        torch.testing.assert_close(step.transport, transport, rtol=1e-5, atol=1e-6)
        ce = nn.functional.cross_entropy(step.logits, labels)
        torch.testing.assert_close(step.loss, ce + transport / (2 * tau), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["hf", "cifar"])
def test_fused_energy_trains_like_a_kept_branch_copy(family, make_hf_resnet, make_cifar_resnet, monkeypatch):
    if family == "hf":
        base, pixel_values = make_hf_resnet(depths=(2, 2)), torch.randn(3, 3, 32, 32)
    else:
        base, pixel_values = make_cifar_resnet(num_channels=1, depths=(2, 2, 2)), torch.randn(3, 1, 8, 8)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, tau=0.5)).train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):  # away from the identity so the energy depends on every parameter
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    parameters = [p for p in model.parameters() if p.requires_grad]
    labels = torch.tensor([0, 1, 2])

    def loss_and_gradients():
        loss = sum(step.loss for step in model.iter_modules(pixel_values=pixel_values, labels=labels))
        return loss.detach(), torch.autograd.grad(loss, parameters, allow_unused=True)

    fused_loss, fused_grads = loss_and_gradients()
    monkeypatch.setattr(model.adapter, "_final_normalization", lambda block, energy: None)
    copy_loss, copy_grads = loss_and_gradients()
    torch.testing.assert_close(fused_loss, copy_loss)
    assert sum(grad is not None for grad in copy_grads) == len(parameters)
    for fused, copied in zip(fused_grads, copy_grads):
        torch.testing.assert_close(fused, copied, rtol=1e-4, atol=1e-6)


def test_downsampling_blocks_are_penalised_and_stem_is_not(make_cifar_resnet):
    base = make_cifar_resnet(num_channels=1, depths=(1, 1, 1))
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=3))
    adapter = model.adapter
    assert len(adapter.blocks) == 3
    pixel_values = torch.randn(2, 1, 8, 8)
    state = adapter.embed(pixel_values=pixel_values)
    _, energies = adapter.run_block(1, state.with_hidden(adapter.blocks[0](state.hidden)))
    assert len(energies) == 1 and energies[0] > 0  # the stride-2, channel-widening block has its branch penalised
    stem_params = set(map(id, model.backbone.embedder.parameters()))
    assert stem_params <= set(map(id, model.module_parameters(0)))


def test_residual_capture_survives_in_place_addition(make_hf_resnet):
    base = make_hf_resnet()
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, image_size=32)).eval()
    block = model.adapter.blocks[1]
    hidden = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        _, energies = model.adapter.run_block(1, BlockState(hidden))
        branch = block.layer(hidden)
    torch.testing.assert_close(energies[0], branch.pow(2).mean())


def test_unsupported_model_lists_supported_architectures():
    with pytest.raises(ValueError, match="cannot train Sequential.*Supported: .*ResNet.*supported_architectures"):
        TRGLModel.from_base(nn.Sequential(nn.Linear(3, 3)), TRGLConfig(num_modules=1))


def test_conv_head_refuses_images_too_small(make_cifar_resnet):
    base = make_cifar_resnet(num_channels=1)
    with pytest.raises(ValueError, match="head_pool_size"):
        TRGLModel.from_base(base, TRGLConfig(num_modules=3, image_size=4, head_pool_size=2))
