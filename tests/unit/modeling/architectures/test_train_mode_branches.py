"""The issue-28 encoder and mixture-of-experts families in train mode: with dropout (and Mixtral's router jitter)
active, each module's transport term is exactly the branches' outputs of the very forward that trained it (hooks on
the ground-truth branch modules of the cut model's own blocks, same random draws); MPNet's relative position bias,
shared by every layer, is trained by module 1 alone."""

from __future__ import annotations

import pytest
import torch

from trgl_hf import TRGLConfig, TRGLModel

from .cases_encoders import ENCODERS_CASES
from .cases_mixtures import MIXTURES_CASES
from .test_registry import build, inputs_for, perturb

CLASSES = [
    "CamembertForSequenceClassification", "Data2VecTextForSequenceClassification", "ErnieForSequenceClassification",
    "RobertaPreLayerNormForSequenceClassification", "XLMRobertaXLForSequenceClassification",
    "MegatronBertForSequenceClassification", "MPNetForSequenceClassification", *sorted(MIXTURES_CASES),
]  # fmt: skip
CASES = {**ENCODERS_CASES, **MIXTURES_CASES}


@pytest.mark.parametrize("class_name", CLASSES)
def test_transport_is_exact_in_train_mode(class_name):
    base = build(class_name)
    for module in base.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.3
        if isinstance(getattr(module, "attention_dropout", None), float):  # decoders' functional attention dropout
            module.attention_dropout = 0.3
        if hasattr(module, "jitter_noise"):  # Mixtral's router jitter
            module.jitter_noise = 0.1
    perturb(base)
    inputs, labels = inputs_for(base)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, tau=1.0)).train()
    outputs: dict[int, list[torch.Tensor]] = {}
    for index, block in enumerate(model.adapter.blocks):
        for name in CASES[class_name][2]:

            def hook(module, args, output, index=index):
                output = output[0] if isinstance(output, tuple) else output
                outputs.setdefault(index, []).append(output.detach().clone())

            block.get_submodule(name).register_forward_hook(hook)
    steps = list(model.iter_modules(labels=labels, **inputs))
    real = inputs["attention_mask"].bool()[..., None]
    per_block = [sum(b.float().pow(2)[real.expand_as(b)].mean() for b in outputs[i]) for i in sorted(outputs)]
    first = model.config.split[0]
    for step, expected in zip(steps, (sum(per_block[:first]), sum(per_block[first:]))):
        torch.testing.assert_close(step.transport.detach(), expected.reshape(()), rtol=1e-5, atol=1e-7)
    again = list(model.iter_modules(labels=labels, **inputs))  # dropout is active: another draw, another term
    assert not torch.equal(again[0].transport, steps[0].transport)


def test_mpnet_relative_position_bias_trains_with_module_1_only():
    base = build("MPNetForSequenceClassification")
    inputs, labels = inputs_for(base)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, tau=1.0)).train()
    bias = model.backbone.encoder.relative_attention_bias.weight
    assert any(p is bias for p in model.module_parameters(0))
    assert not any(p is bias for p in model.module_parameters(1))
    steps = list(model.iter_modules(labels=labels, **inputs))
    steps[1].loss.backward()
    assert bias.grad is None  # module 2 reads the bias detached
    steps[0].loss.backward()
    assert bias.grad is not None and bias.grad.abs().sum() > 0
