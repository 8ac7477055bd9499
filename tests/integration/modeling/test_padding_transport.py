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
from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast, default_data_collator

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

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


def dataset(padding: str, language_model: bool) -> tuple[Dataset, object]:
    """`padding`: "right" / "left" (every row padded to WIDTH), "dynamic" (DataCollatorWithPadding, right) or
    "multiple" (the same with `pad_to_multiple_of=8`, as run_glue pads under fp16)."""
    texts = rows()
    labels = torch.randint(0, 2, (len(texts),), generator=torch.Generator().manual_seed(1)).tolist()
    if padding in ("dynamic", "multiple"):
        collator = DataCollatorWithPadding(tokenizer("right"), pad_to_multiple_of=8 if padding == "multiple" else None)
        if padding == "multiple":  # sorted: the cache's batches get widths 8 and 16, so no single width is fixed
            texts = sorted(texts, key=len)
        return Dataset.from_dict({"input_ids": texts, "label": labels}), collator
    padded = [pad(ids, padding) for ids in texts]
    columns = {"input_ids": [ids for ids, _ in padded], "attention_mask": [mask for _, mask in padded]}
    if language_model:
        columns["labels"] = [[t if m else -100 for t, m in zip(ids, mask)] for ids, mask in padded]
    else:
        columns["label"] = labels
    return Dataset.from_dict(columns), default_data_collator


def train_sequential(class_name: str, padding: str, cache: str, out, dropout: bool = False) -> dict[str, torch.Tensor]:
    data, collator = dataset(padding, class_name.endswith("LMHeadModel"))
    model = TRGLModel.from_base(build(class_name, dropout), TRGLConfig(num_modules=3, tau=0.5))
    args = TRGLTrainingArguments(output_dir=str(out / cache), trgl_mode="sequential", num_train_epochs=1,
                                 per_device_train_batch_size=8, learning_rate=0.1, optim="sgd", use_cpu=True,
                                 report_to="none", save_strategy="no", disable_tqdm=True, trgl_save_stages=False,
                                 trgl_prefix_cache=cache)  # fmt: skip
    TRGLTrainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_training(class_name: str, padding: str, out, dropout: bool = False) -> None:
    cached = train_sequential(class_name, padding, "always", out, dropout)
    uncached = train_sequential(class_name, padding, "never", out, dropout)
    initial = TRGLModel.from_base(build(class_name), TRGLConfig(num_modules=3)).state_dict()
    blocks = [name for name in initial if name.startswith("backbone.") and any(p.isdigit() for p in name.split("."))]
    assert blocks and all(not torch.equal(uncached[name], initial[name]) for name in blocks)  # every block trained
    for name, tensor in uncached.items():
        torch.testing.assert_close(cached[name], tensor, rtol=0, atol=1e-6, msg=name)


# ------------------------------------------------------------------------------------------------ cached = uncached


CASES = [(name, padding) for name in MODELS for padding in ("right", "left", "dynamic")
         if not (name == "GPT2LMHeadModel" and padding == "dynamic")]  # fmt: skip


@pytest.mark.parametrize(("class_name", "padding"), CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_cached_and_uncached_sequential_training_agree(class_name, padding, tmp_path):
    assert_same_training(class_name, padding, tmp_path)


DROPOUT_CASES = [("BertForSequenceClassification", "right"), ("GPT2ForSequenceClassification", "dynamic"),
                 ("LlamaForSequenceClassification", "left"),
                 ("BertForSequenceClassification", "multiple")]  # fmt: skip


@pytest.mark.parametrize(("class_name", "padding"), DROPOUT_CASES, ids=[f"{n}-{p}" for n, p in DROPOUT_CASES])
def test_with_dropout_cached_training_draws_the_same_masks(class_name, padding, tmp_path):
    assert_same_training(class_name, padding, tmp_path, dropout=True)
