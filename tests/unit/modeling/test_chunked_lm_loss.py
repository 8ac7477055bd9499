"""The chunked next-token loss: same loss and gradients as on whole logits, and a trained module's whole
`(batch, length, vocab)` logits never exist."""

import copy

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from trgl_hf import TRGLConfig, TRGLModel
from trgl_hf.modeling.losses import chunked_causal_lm_loss, lm_loss_chunk_tokens
from trgl_hf.modeling.tasks import get_task

VOCAB = 37


def head_and_inputs(seed: int = 0):
    torch.manual_seed(seed)
    head = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, VOCAB))
    hidden = torch.randn(3, 11, 8, requires_grad=True)
    labels = torch.randint(0, VOCAB, (3, 11))
    labels[0, :4] = -100
    labels[2, 7:] = -100
    return head, hidden, labels


@pytest.mark.parametrize("chunk_tokens", [1, 3, 7, 16, 1000])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_chunked_loss_and_gradients_equal_the_whole_logits_loss(chunk_tokens, label_smoothing):
    head, hidden, labels = head_and_inputs()
    expected = get_task("causal_lm").loss(head(hidden), labels, label_smoothing)
    params = [hidden, *head.parameters()]
    expected_grads = torch.autograd.grad(expected, params)
    loss = chunked_causal_lm_loss(hidden, labels, head, chunk_tokens, label_smoothing)
    grads = torch.autograd.grad(loss, params)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-6, atol=1e-6)


def test_each_chunk_holds_its_positions_only_in_forward_and_backward():
    head, hidden, labels = head_and_inputs()
    shapes = []
    head[1].register_forward_hook(lambda module, args, output: shapes.append(tuple(output.shape)))
    loss = chunked_causal_lm_loss(hidden, labels, head, chunk_tokens=6)  # 6 tokens = 2 positions of 3 rows
    forward_calls = len(shapes)
    loss.backward()
    assert forward_calls == 5 and len(shapes) == 10  # every chunk once in forward, recomputed once in backward
    assert max(shape[1] for shape in shapes) == 2


def build(family):
    torch.manual_seed(0)
    if family == "gpt2":
        config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=4, n_head=2, bos_token_id=0, eos_token_id=0,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        return GPT2LMHeadModel(config)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=32))  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("aux_head", ["native", "tied"])
def test_training_modules_never_hold_whole_logits_and_train_as_unchunked(family, aux_head):
    base = build(family)
    chunked = TRGLModel.from_base(base, TRGLConfig(num_modules=2, aux_head=aux_head, lm_loss_chunk_tokens=4))
    whole = copy.deepcopy(chunked)
    whole.config.lm_loss_chunk_tokens = 10_000  # one chunk: today's computation on the whole logits
    torch.manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (2, 9))
    labels = input_ids.masked_fill(torch.rand(2, 9) < 0.2, -100)
    widths = []
    for model in (chunked, whole):
        model.train()
        for head in model.heads:
            projection = getattr(head, head.output_name)
            projection.register_forward_hook(lambda module, args, output: widths.append(output.shape[1]))
        for step in model.iter_modules(labels=labels, input_ids=input_ids):
            assert step.logits is None  # training returns the loss, not the logits
            step.loss.backward()
        if model is chunked:
            assert max(widths) == 2  # 4 tokens = 2 positions of 2 rows, never the 8 scored positions at once
    for (name, ours), theirs in zip(chunked.named_parameters(), whole.parameters()):
        if ours.grad is not None or theirs.grad is not None:
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-6, atol=1e-6, msg=name)


def test_evaluation_keeps_the_last_module_logits_and_per_module_losses():
    model = TRGLModel.from_base(build("gpt2"), TRGLConfig(num_modules=2, lm_loss_chunk_tokens=4)).eval()
    input_ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        output = model(input_ids=input_ids, labels=input_ids)
        steps = list(model.iter_modules(labels=input_ids, input_ids=input_ids))
    torch.testing.assert_close(output.logits, steps[-1].logits, rtol=0, atol=0)
    torch.testing.assert_close(output.module_losses, torch.stack([s.task_loss for s in steps]), rtol=0, atol=0)


def test_automatic_chunk_size_bounds_float32_logits_to_64_mib():
    assert lm_loss_chunk_tokens(None, 32_000) == 524
    assert lm_loss_chunk_tokens(None, 65) == 258_111
    assert lm_loss_chunk_tokens(128, 32_000) == 128
    with pytest.raises(ValueError, match="lm_loss_chunk_tokens"):
        TRGLConfig(lm_loss_chunk_tokens=0)
