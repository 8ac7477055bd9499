"""Decoder configurations the registry's conformance rows (`cases_decoders.py`, built with eager attention and branch
modules whose outputs are added as they are) cannot express:

- Granite adds `residual_multiplier * branch` to the stream: the transport term penalises that product (what is
  added), not the attention / MLP output before the scale.
- Falcon with ALiBi is exact with SDPA attention (transformers' eager path adds ALiBi twice, so it is refused).
- BLOOM with `apply_residual_connection_post_layernorm` is refused.
"""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from trgl_hf import TRGLConfig, TRGLModel

from .cases_common import DECODER, TEXT
from .cases_decoders import DROPOUT_CASES
from .test_registry import inputs_for, perturb


def _granite(residual_multiplier: float) -> tf.GraniteForCausalLM:
    torch.manual_seed(0)
    config = tf.GraniteConfig(**DECODER, num_hidden_layers=4, embedding_multiplier=3.0, attention_multiplier=0.2,
                              logits_scaling=4.0, residual_multiplier=residual_multiplier)  # fmt: skip
    config._attn_implementation = "eager"
    model = tf.GraniteForCausalLM(config).eval()
    perturb(model)
    return model


def _hooked_branches(model: tf.GraniteForCausalLM, inputs: dict) -> list[torch.Tensor]:
    """Energy per block: the attention and MLP outputs, times the multiplier (what the block adds to the stream)."""
    scale = model.config.residual_multiplier
    mask = inputs["attention_mask"].bool()[..., None]
    energies: list[list[torch.Tensor]] = [[] for _ in model.model.layers]
    handles = []
    for index, layer in enumerate(model.model.layers):
        for module in (layer.self_attn, layer.mlp):

            def hook(module, args, output, index=index):
                branch = (output[0] if isinstance(output, tuple) else output) * scale
                energies[index].append(branch.pow(2)[mask.expand_as(branch)].mean())

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    return [sum(block) for block in energies]


def test_granite_transport_penalises_the_scaled_branch():
    for multiplier in (0.25, 2.0):
        base = _granite(multiplier)
        inputs, labels = inputs_for(base)
        blocks = _hooked_branches(base, inputs)
        with torch.no_grad():
            base_logits = base(**inputs).logits
        model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, tau=1.0)).eval()
        split = model.config.split
        with torch.no_grad():
            steps = list(model.iter_modules(labels=labels, **inputs))
        for step, expected in zip(steps, [sum(blocks[: split[0]]), sum(blocks[split[0] :])]):
            torch.testing.assert_close(step.transport, expected.reshape(()), rtol=1e-5, atol=1e-7)
            unscaled = expected / multiplier**2  # the branch before the scale: a different (wrong) term
            assert not torch.isclose(step.transport, unscaled.reshape(()), rtol=1e-3)
        torch.testing.assert_close(steps[-1].logits, base_logits, rtol=1e-5, atol=1e-5)


def _falcon(task: type, attn_implementation: str, **kwargs) -> tf.PreTrainedModel:
    torch.manual_seed(0)
    config = tf.FalconConfig(**TEXT, num_hidden_layers=4, alibi=True, pad_token_id=0, num_labels=3, **kwargs)
    config._attn_implementation = attn_implementation
    model = task(config).eval()
    perturb(model)
    return model


@pytest.mark.parametrize("parallel_attn", [False, True])
def test_falcon_with_alibi_is_exact_with_sdpa(parallel_attn, tmp_path):
    task = tf.FalconForSequenceClassification if parallel_attn else tf.FalconForCausalLM
    base = _falcon(task, "sdpa", parallel_attn=parallel_attn, bias=not parallel_attn)
    inputs, labels = inputs_for(base)
    branches: list[list[torch.Tensor]] = [[] for _ in base.transformer.h]
    handles = [
        module.register_forward_hook(
            lambda m, a, o, i=index: branches[i].append((o[0] if isinstance(o, tuple) else o).clone())
        )
        for index, layer in enumerate(base.transformer.h)
        for module in (layer.self_attention, layer.mlp)
    ]
    with torch.no_grad():
        base_logits = base(**inputs).logits
    for handle in handles:
        handle.remove()
    mask = inputs["attention_mask"].bool()[..., None]
    if parallel_attn:  # one stream update per block: attention + MLP
        branches = [[sum(block)] for block in branches]
    energies = [sum(b.pow(2)[mask.expand_as(b)].mean() for b in block) for block in branches]
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, tau=1.0)).eval()
    split = model.config.split
    with torch.no_grad():
        steps = list(model.iter_modules(labels=labels, **inputs))
    for step, expected in zip(steps, [sum(energies[: split[0]]), sum(energies[split[0] :])]):
        torch.testing.assert_close(step.transport, expected.reshape(()), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(steps[-1].logits, base_logits, rtol=1e-5, atol=1e-5)
    auto = AutoModelForSequenceClassification if parallel_attn else AutoModelForCausalLM
    for stage in (1, 2):
        model.export_stage(stage).save_pretrained(tmp_path / str(stage))
        loaded = auto.from_pretrained(tmp_path / str(stage)).eval()  # the default attention: SDPA
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, steps[stage - 1].logits, rtol=1e-5, atol=1e-5)


def test_falcon_with_alibi_and_eager_attention_and_bloom_post_layernorm_residual_are_refused():
    with pytest.raises(ValueError, match="alibi.*sdpa"):
        TRGLModel.from_base(_falcon(tf.FalconForCausalLM, "eager"), TRGLConfig(num_modules=2))
    bloom = tf.BloomForCausalLM(tf.BloomConfig(**TEXT, n_layer=2, apply_residual_connection_post_layernorm=True))
    with pytest.raises(ValueError, match="apply_residual_connection_post_layernorm"):
        TRGLModel.from_base(bloom, TRGLConfig(num_modules=2))


@pytest.mark.parametrize("class_name", sorted(DROPOUT_CASES))
def test_dropout_in_train_mode_is_part_of_the_penalised_branch(class_name):
    """In train mode the transport term penalises each branch as added, dropout included (same dropout masks)."""
    config_name, kwargs, names, combine = DROPOUT_CASES[class_name]
    torch.manual_seed(0)
    config = getattr(tf, config_name)(**{"pad_token_id": 0, **kwargs}, num_hidden_layers=4)
    config._attn_implementation = "eager"
    base = getattr(tf, class_name)(config)
    perturb(base)
    inputs, labels = inputs_for(base)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, tau=1.0)).train()
    with torch.no_grad():
        list(model.iter_modules(labels=labels, **inputs))  # a first pass (the cutter learns what blocks return)
    branches: list[list[torch.Tensor]] = [[] for _ in model.adapter.blocks]
    handles = [
        block.get_submodule(name).register_forward_hook(
            lambda m, a, o, i=index: branches[i].append((o[0] if isinstance(o, tuple) else o).clone())
        )
        for index, block in enumerate(model.adapter.blocks)
        for name in names
    ]
    torch.manual_seed(3)
    with torch.no_grad():
        steps = list(model.iter_modules(labels=labels, **inputs))
    for handle in handles:
        handle.remove()
    assert all(len(block) == 2 for block in branches)  # attention and MLP, once each (Phi: its dropout twice)
    mask = inputs["attention_mask"].bool()[..., None]
    if combine == "sum":
        branches = [[sum(block)] for block in branches]
    energies = [sum(b.pow(2)[mask.expand_as(b)].mean() for b in block) for block in branches]
    split = model.config.split
    for step, expected in zip(steps, [sum(energies[: split[0]]), sum(energies[split[0] :])]):
        torch.testing.assert_close(step.transport, expected.reshape(()), rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # the dropout is really on: another draw gives another transport term
        torch.manual_seed(4)
        other = list(model.iter_modules(labels=labels, **inputs))
    assert not torch.isclose(other[0].transport, steps[0].transport, rtol=1e-4)
