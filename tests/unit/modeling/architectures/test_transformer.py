"""Transformer families (BERT, RoBERTa, GPT-2, Llama, ViT): cutting, exact transport, isolation, native export."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

from trgl_hf import TRGLConfig, TRGLModel


def build(family):
    torch.manual_seed(0)
    small = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)
    if family == "bert":
        return BertForSequenceClassification(BertConfig(vocab_size=40, num_labels=3, **small))
    if family == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(vocab_size=40, num_labels=3, pad_token_id=1, **small))
    if family == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(vocab_size=40, n_embd=16, n_layer=4, n_head=2, bos_token_id=0, eos_token_id=0)
        )
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=40, num_key_value_heads=1, **small))
    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_labels=3, **small))


def inputs_for(family):
    torch.manual_seed(1)
    if family == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16)}, torch.tensor([0, 2])
    input_ids = torch.randint(2, 40, (2, 7))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    labels = input_ids.clone() if family in ("gpt2", "llama") else torch.tensor([0, 2])
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels


AUTO = {
    "bert": AutoModelForSequenceClassification,
    "roberta": AutoModelForSequenceClassification,
    "gpt2": AutoModelForCausalLM,
    "llama": AutoModelForCausalLM,
    "vit": AutoModelForImageClassification,
}
FAMILIES = list(AUTO)


def branch_hooks(family, block):
    """Independent capture of the residual branches, from the attention and MLP sub-modules' own outputs."""
    first = lambda output: output[0] if isinstance(output, tuple) else output  # noqa: E731
    if family in ("bert", "roberta"):  # post-LN: branch = dense output before dropout + LayerNorm(x + branch)
        return [block.attention.output.dense, block.output.dense], first
    if family == "gpt2":
        return [block.attn, block.mlp], first
    if family == "llama":
        return [block.self_attn, block.mlp], first
    return [block.attention, block.mlp], first


@pytest.mark.parametrize("family", FAMILIES)
def test_transport_matches_branch_outputs(family):
    model = TRGLModel.from_base(build(family), TRGLConfig(num_modules=2, tau=4.0)).eval()
    inputs, labels = inputs_for(family)
    for block in model.adapter.blocks:  # make branches non-trivial
        for param in block.parameters():
            param.data.normal_(0, 0.2)
    captured = []
    handles = []
    for block in model.adapter.blocks:
        modules, first = branch_hooks(family, block)
        for module in modules:
            handles.append(module.register_forward_hook(lambda m, a, o, first=first: captured.append(first(o))))
    with torch.no_grad():
        steps = list(model.iter_modules(labels=labels, **inputs))
    for handle in handles:
        handle.remove()
    real = inputs["attention_mask"].bool() if "attention_mask" in inputs else None  # padded text: real tokens only
    energies = [branch.pow(2).mean() if real is None else branch.pow(2)[real].mean() for branch in captured]
    assert len(energies) == 8  # 4 blocks x (attention, MLP)
    for step, expected in zip(steps, [sum(energies[:4]), sum(energies[4:])]):
        torch.testing.assert_close(step.transport, expected, rtol=1e-4, atol=1e-6)
    taus = model.config.module_taus()
    assert taus == [2.0, 4.0]
    torch.testing.assert_close(steps[1].loss - steps[1].task_loss, steps[1].transport / (2 * 4.0))


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_stay_inside_each_module(family):
    model = TRGLModel.from_base(build(family), TRGLConfig(num_modules=2)).train()
    inputs, labels = inputs_for(family)
    params = list(model.parameters())
    for step in model.iter_modules(labels=labels, **inputs):
        own = set(map(id, model.module_parameters(step.index)))
        grads = torch.autograd.grad(step.loss, params, allow_unused=True)
        assert any(g is not None and g.any() for p, g in zip(params, grads) if id(p) in own)
        assert all(g is None or not g.any() for p, g in zip(params, grads) if id(p) not in own)


@pytest.mark.parametrize("family", FAMILIES)
def test_stages_export_as_native_models_with_identical_logits(family, tmp_path):
    base = build(family)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=4)).eval()
    inputs, _ = inputs_for(family)
    with torch.no_grad():
        steps = list(model.iter_modules(**inputs))
        torch.testing.assert_close(steps[-1].logits, base.eval()(**inputs).logits)  # last head = base head
    for stage in (1, 3):
        model.export_stage(stage).save_pretrained(tmp_path / str(stage))
        config_text = (tmp_path / str(stage) / "config.json").read_text()
        assert "auto_map" not in config_text  # no remote code needed
        loaded = AUTO[family].from_pretrained(tmp_path / str(stage)).eval()
        assert type(loaded) is type(base) and loaded.config.num_hidden_layers == stage
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).logits, steps[stage - 1].logits)


def test_decoder_heads_are_untied_lm_heads():
    base = build("gpt2")
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2))
    assert model.config.task == "causal_lm"
    lm_head = model.heads[0].lm_head
    assert lm_head.weight.data_ptr() != model.backbone.wte.weight.data_ptr()
    assert "transformer.ln_f.weight" in model.heads[0].state_dict()


def test_bare_backbone_and_bad_head_are_refused():
    with pytest.raises(ValueError, match="task model"):
        TRGLModel.from_base(
            BertModel(
                BertConfig(
                    vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
                )
            ),
            TRGLConfig(num_modules=2),
        )
    with pytest.raises(ValueError, match="aux_head"):
        TRGLModel.from_base(build("bert"), TRGLConfig(num_modules=2, aux_head="conv"))
    with pytest.raises(ValueError, match="between 1 and 4"):
        TRGLModel.from_base(build("bert"), TRGLConfig(num_modules=5))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_trainable_parameter_gets_a_gradient(family):
    model = TRGLModel.from_base(build(family), TRGLConfig(num_modules=2)).train()
    model.set_trainable_modules(range(2))
    inputs, labels = inputs_for(family)
    for step in model.iter_modules(labels=labels, **inputs):
        step.loss.backward()
    dead = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not dead, dead


@pytest.mark.parametrize("family", FAMILIES)
def test_recomputed_branch_difference_trains_like_plain_autograd(family, monkeypatch):
    from trgl_hf.modeling.losses import branch_energy

    model = TRGLModel.from_base(build(family), TRGLConfig(num_modules=2, tau=0.5)).train()
    for block in model.adapter.blocks:  # make branches non-trivial
        for param in block.parameters():
            param.data.normal_(0, 0.2)
    inputs, labels = inputs_for(family)
    parameters = [p for p in model.parameters() if p.requires_grad]

    def loss_and_gradients():
        torch.manual_seed(0)  # same dropout masks
        loss = sum(step.loss for step in model.iter_modules(labels=labels, **inputs))
        return loss.detach(), torch.autograd.grad(loss, parameters, allow_unused=True)

    recomputed_loss, recomputed_grads = loss_and_gradients()
    plain = lambda after, before, differentiable, mask=None: branch_energy(after - before, mask)  # noqa: E731
    monkeypatch.setattr(model.adapter, "difference_energy", plain)
    plain_loss, plain_grads = loss_and_gradients()
    torch.testing.assert_close(recomputed_loss, plain_loss)
    for recomputed, plain in zip(recomputed_grads, plain_grads):
        assert (recomputed is None) == (plain is None)
        if plain is not None:
            torch.testing.assert_close(recomputed, plain, rtol=1e-4, atol=1e-6)
