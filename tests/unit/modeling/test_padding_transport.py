"""The transport term on real tokens: for padded text, mean(r ** 2) runs over the attended positions x features
(the paper's mean over batch x features, extended to padded text), so padding never changes the objective, and a
sequential run trains the same weights with the prefix cache (rows stored without padding) as without it, for
right-padded, left-padded and dynamically padded (`DataCollatorWithPadding`) batches."""

from __future__ import annotations

import pytest
import tokenizers
import torch
import transformers as tf
from datasets import Dataset
from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

from trgl_hf import TRGLConfig, TRGLModel
from trgl_hf.modeling.losses import DifferenceEnergy, branch_energy, transport_cost
from trgl_hf.training.prefix_cache import PrefixCache, ShardWriter, prefix_cache_decision

VOCAB, PAD, WIDTH = 40, 0, 14
TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
            num_hidden_layers=3, pad_token_id=PAD, num_labels=2)  # fmt: skip
NO_DROPOUT = {"BertConfig": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
              "GPT2Config": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0),
              "LlamaConfig": dict(attention_dropout=0.0), "ModernBertConfig": {}}  # fmt: skip
# class -> (config class, config kwargs, with dropout)
MODELS = {
    "BertForSequenceClassification": ("BertConfig", TEXT),  # post-LN encoder
    "ModernBertForSequenceClassification": ("ModernBertConfig", dict(TEXT, bos_token_id=1, eos_token_id=2,
                                            cls_token_id=1, sep_token_id=2, local_attention=4,
                                            classifier_pooling="mean", attention_dropout=0.1, mlp_dropout=0.1)),
    "GPT2ForSequenceClassification": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=2,
                                      n_positions=32, pad_token_id=PAD, num_labels=2)),
    "GPT2LMHeadModel": ("GPT2Config", dict(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=2, n_positions=32,
                        pad_token_id=PAD)),
    "LlamaForSequenceClassification": ("LlamaConfig", dict(TEXT, num_key_value_heads=1, bos_token_id=1,
                                       eos_token_id=2, attention_dropout=0.1)),
}  # fmt: skip


def build(class_name: str, dropout: bool = False, seed: int = 0) -> torch.nn.Module:
    config_name, kwargs = MODELS[class_name]
    kwargs = dict(kwargs) if dropout else {**kwargs, **NO_DROPOUT[config_name]}
    if config_name == "ModernBertConfig" and not dropout:
        kwargs.update(attention_dropout=0.0, mlp_dropout=0.0)
    torch.manual_seed(seed)
    config = getattr(tf, config_name)(**kwargs)
    config._attn_implementation = "eager"
    model = getattr(tf, class_name)(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # branches well away from zero (some inits make them tiny), so the penalty matters
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name and name.split(".")[0] != "score":
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def rows(count: int = 24, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, WIDTH - 1, (count,), generator=generator).tolist()
    return [torch.randint(3, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def pad(ids: list[int], side: str, width: int = WIDTH, value: int = PAD) -> tuple[list[int], list[int]]:
    padding = [value] * (width - len(ids))
    real = [1] * len(ids)
    if side == "left":
        return padding + ids, [0] * len(padding) + real
    return ids + padding, real + [0] * len(padding)


def tokenizer(side: str) -> PreTrainedTokenizerFast:
    model = tokenizers.models.WordLevel({"[PAD]": PAD, "[UNK]": 1}, unk_token="[UNK]")
    return PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(model), pad_token="[PAD]", padding_side=side)


# ---------------------------------------------------------------------------------------------------- the definition


def test_the_masked_energy_is_the_mean_over_real_tokens_by_hand():
    residual = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [100.0, 7.0]], [[0.5, 0.5], [-9.0, 50.0], [4.0, 4.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # real tokens: (1, 2), (3, -1), (0.5, 0.5): squares 1 + 4 + 9 + 1 + 0.25 + 0.25 = 15.5 over 3 tokens x 2 features
    expected = torch.tensor(15.5 / 6)
    torch.testing.assert_close(branch_energy(residual, mask), expected, rtol=0, atol=0)
    torch.testing.assert_close(transport_cost([residual, 2 * residual], mask), expected * 5, rtol=1e-7, atol=0)
    before = torch.randn(2, 3, 2, requires_grad=True)
    after = (before.detach() + residual).requires_grad_()
    energy = DifferenceEnergy.apply(after, before, mask)
    torch.testing.assert_close(energy, expected, rtol=1e-6, atol=0)
    energy.backward()
    by_hand = 2 * residual * mask[..., None] / 6  # d/dr of sum(real r ** 2) / 6; padded positions get nothing
    torch.testing.assert_close(after.grad, by_hand, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(before.grad, -by_hand, rtol=1e-6, atol=1e-7)


def test_unpadded_inputs_keep_the_papers_mean_over_batch_and_features():
    torch.manual_seed(0)
    residual, ones = torch.randn(4, 9, 32), torch.ones(4, 9, dtype=torch.long)
    assert torch.equal(branch_energy(residual, ones), residual.pow(2).mean())
    assert torch.equal(branch_energy(residual), residual.pow(2).mean())
    after, before = torch.randn(4, 9, 32, requires_grad=True), torch.randn(4, 9, 32, requires_grad=True)
    plain, masked = DifferenceEnergy.apply(after, before), DifferenceEnergy.apply(after, before, ones)
    assert torch.equal(plain, masked) and torch.equal(plain, (after - before).pow(2).mean())
    grads = [torch.autograd.grad(energy, (after, before)) for energy in (plain, masked)]
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_a_mask_that_does_not_fit_the_stream_is_refused():
    with pytest.raises(ValueError, match="one mask entry per"):
        branch_energy(torch.randn(2, 5, 4), torch.ones(2, 6))


@pytest.mark.parametrize("class_name", [n for n in MODELS if n != "GPT2LMHeadModel"])
def test_more_padding_with_other_values_changes_neither_transport_nor_heads(class_name):
    """The same real tokens, padded to 8 with the pad id or to 13 with random ids: same energies, same logits."""
    model = TRGLModel.from_base(build(class_name), TRGLConfig(num_modules=3)).eval()
    texts = [[5, 9, 12, 7, 3], [4, 4, 30, 11, 8, 21, 6], [17, 3]]
    generator = torch.Generator().manual_seed(3)
    outputs = []
    for width, garbage in ((8, False), (13, True)):
        padded = [pad(ids, "right", width) for ids in texts]
        input_ids = torch.tensor([ids for ids, _ in padded])
        mask = torch.tensor([m for _, m in padded])
        if garbage:  # any token under a zero mask: only the GPT-2 / Llama heads' pad search reads the pad id itself
            noise = torch.randint(3, VOCAB, input_ids.shape, generator=generator)
            keep_pad = class_name.startswith(("GPT2", "Llama"))
            input_ids = torch.where(mask.bool() | keep_pad, input_ids, noise)
        with torch.no_grad():
            outputs.append(list(model.iter_modules(input_ids=input_ids, attention_mask=mask)))
    for short, long in zip(*outputs):
        assert float(short.transport) > 0
        torch.testing.assert_close(long.transport, short.transport, rtol=1e-5, atol=0)
        torch.testing.assert_close(long.logits, short.logits, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- refusals


def test_left_padding_per_batch_is_never_cached():
    data = Dataset.from_dict({"input_ids": rows(), "label": [0] * 24})
    left = DataCollatorWithPadding(tokenizer("left"))
    use, reason = prefix_cache_decision("auto", data, left)
    assert not use and "left" in reason
    assert prefix_cache_decision("auto", data, DataCollatorWithPadding(tokenizer("right")))[0]
    assert prefix_cache_decision("auto", data, DataCollatorWithPadding(tokenizer("left"), padding="max_length"))[0]
    with pytest.raises(ValueError, match="pads on the left to each batch's longest row"):
        prefix_cache_decision("always", data, left)
    writer = ShardWriter(None, "rank-000", ("trgl_hidden_states", "input_ids", "attention_mask"), None)
    for width in (5, 7):  # a custom collator padding on the left per batch: found when the cache is built
        mask = torch.tensor([[0, 0] + [1] * (width - 2), [1] * width])
        batch = {"trgl_hidden_states": torch.randn(2, width, 4), "input_ids": mask * 7, "attention_mask": mask,
                 "labels": torch.tensor([0, 1])}  # fmt: skip
        if width == 7:
            with pytest.raises(ValueError, match="padded on the left to different widths"):
                writer.add(batch)
        else:
            writer.add(batch)


def test_language_model_labels_on_padding_are_refused_by_the_cache():
    writer = ShardWriter(None, "rank-000", ("trgl_hidden_states", "input_ids", "attention_mask", "labels"), None)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    good = {"trgl_hidden_states": torch.randn(2, 4, 4), "input_ids": mask * 7, "attention_mask": mask,
            "labels": torch.tensor([[5, 6, 7, -100], [5, 6, 7, 8]])}  # fmt: skip
    writer.add(good)
    with pytest.raises(ValueError, match="labels at padding positions are not -100"):
        writer.add({**good, "labels": torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])})


def test_rows_padded_to_one_width_come_back_at_that_width_and_per_batch_rows_at_the_longest():
    def cache_of(batches):
        writer = ShardWriter(None, "rank-000", ("trgl_hidden_states", "input_ids", "attention_mask"), None)
        for lengths, width in batches:
            mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
            writer.add({"trgl_hidden_states": torch.randn(len(lengths), width, 2), "input_ids": mask * 9,
                        "attention_mask": mask, "labels": torch.zeros(len(lengths), dtype=torch.long)})  # fmt: skip
        writer.flush()
        return PrefixCache(writer.shards)

    fixed = cache_of([([3, 2], 6), ([6, 1], 6)])  # padded to 6 even where no row is that long
    assert fixed.padded_width == 6 and fixed.gather([0, 1])["attention_mask"].shape == (2, 6)
    per_batch = cache_of([([3, 2], 3), ([6, 1], 6)])  # each batch padded to its longest row
    assert per_batch.padded_width is None and per_batch.gather([0, 1, 3])["attention_mask"].shape == (3, 3)
