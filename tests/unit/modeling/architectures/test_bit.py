"""BiT: pre-activation and bottleneck blocks, the branch after drop path (train mode too), native truncated stages."""

import pytest
import torch
from transformers import AutoModelForImageClassification, BitConfig, BitForImageClassification
from transformers.models.bit.modeling_bit import BitPreActivationBottleneckLayer

from trgl_hf import TRGLConfig, TRGLModel

from .cases_vision import BIT


def tiny_bit(layer_type: str, **settings) -> BitForImageClassification:
    torch.manual_seed(0)
    model = BitForImageClassification(BitConfig(**dict(BIT, depths=[2, 3]), layer_type=layer_type, num_labels=3,
                                                **settings))  # fmt: skip
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def added_by_each_block(model: TRGLModel, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """What each block adds to its shortcut, from the stream around it (no hook on the branch): out - shortcut, the
    shortcut being the input or its downsampling convolution; bottleneck blocks apply their activation after the sum,
    so their branch is recomputed from the block's own modules."""
    blocks = [block for stage in model.backbone.encoder.stages for block in stage.layers]
    hidden, branches = model.backbone.embedder(pixel_values), []
    for block in blocks:
        if isinstance(block, BitPreActivationBottleneckLayer):
            shortcut = block.downsample(block.norm1(hidden)) if block.downsample is not None else hidden
            output = block(hidden)
            branches.append(output - shortcut)
        else:
            branch = block.norm3(block.conv3(block.norm2(block.conv2(block.norm1(block.conv1(hidden))))))
            branches.append(branch)
            output = block(hidden)
        hidden = output
    return branches


@pytest.mark.parametrize("layer_type", ["preactivation", "bottleneck"])
def test_transport_is_what_each_block_adds_and_stages_reproduce_the_heads(layer_type, tmp_path):
    base = tiny_bit(layer_type).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base_logits = base(pixel_values=pixel_values).logits
    model = TRGLModel.from_base(base, TRGLConfig(split=[1, 2, 2])).eval()
    assert model.config.family == "bit" and model.config.aux_head == "native"
    with torch.no_grad():
        steps = list(model.iter_modules(pixel_values=pixel_values))
        energies = [branch.pow(2).mean() for branch in added_by_each_block(model, pixel_values)]
    for step, expected in zip(steps, [energies[0], sum(energies[1:3]), sum(energies[3:])]):
        torch.testing.assert_close(step.transport, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(steps[-1].logits, base_logits, rtol=1e-5, atol=1e-5)
    for stage in (1, 2):
        model.export_stage(stage).save_pretrained(tmp_path / str(stage))
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / str(stage)).eval()
        assert isinstance(loaded, BitForImageClassification) and loaded.config.layer_type == layer_type
        assert sum(loaded.config.depths) == [1, 3][stage - 1]
        with torch.no_grad():
            torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, steps[stage - 1].logits,
                                       rtol=1e-5, atol=1e-5)  # fmt: skip


def test_drop_path_in_train_mode_penalises_what_is_added():
    model = TRGLModel.from_base(tiny_bit("preactivation", drop_path_rate=0.7), TRGLConfig(split=[2, 3])).train()
    pixel_values = torch.randn(4, 3, 32, 32)
    torch.manual_seed(5)
    steps = list(model.iter_modules(pixel_values=pixel_values, labels=torch.tensor([0, 1, 2, 0])))
    torch.manual_seed(5)  # the same drop-path draws, block by block
    with torch.no_grad():
        branches = added_by_each_block(model, pixel_values)
    assert any((branch.flatten(1) == 0).all(1).any() for branch in branches)  # some sample's branch was dropped
    energies = [branch.pow(2).mean() for branch in branches]
    for step, expected in zip(steps, [sum(energies[:2]), sum(energies[2:])]):
        torch.testing.assert_close(step.transport.detach(), expected, rtol=1e-5, atol=1e-6)
    sum(step.loss for step in steps).backward()
    assert all(p.grad is not None for index in range(2) for p in model.module_parameters(index))
