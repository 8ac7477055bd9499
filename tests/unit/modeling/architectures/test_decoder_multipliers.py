"""Scaled residual branches: Granite adds `residual_multiplier * branch` to the stream, so the transport term penalises
that product (what is added), not the attention / MLP output before the scale. The registry's conformance row
(`cases_decoders.py`) names branch modules whose outputs are added as they are; this test covers a multiplier != 1."""

from __future__ import annotations

import torch
import transformers as tf

from trgl_hf import TRGLConfig, TRGLModel

from .cases_common import DECODER
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
