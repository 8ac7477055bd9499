"""TRGLTrainer on token data: causal LM perplexity per module, prefix cache with padded batches."""

import codecs
import this  # noqa: F401  (the Zen of Python: a small real text corpus that ships with Python)

import pytest
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

ZEN = codecs.decode(this.s, "rot13")


def char_blocks(length=32):
    vocab = sorted(set(ZEN))
    ids = [vocab.index(c) for c in ZEN]
    blocks = [ids[i : i + length] for i in range(0, len(ids) - length, length // 2)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks}).with_format("torch"), len(vocab)


def args(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        lr_scheduler_type="constant",
    )
    settings.update(overrides)
    return TRGLTrainingArguments(**settings)


def tiny_gpt2(vocab_size):
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    )


def test_causal_lm_reports_perplexity_per_module_and_learns(tmp_path):
    dataset, vocab_size = char_blocks()
    model = TRGLModel.from_base(tiny_gpt2(vocab_size), TRGLConfig(num_modules=2, tau=10.0))
    trainer = TRGLTrainer(
        model=model, args=args(tmp_path, trgl_mode="sequential"), train_dataset=dataset, eval_dataset=dataset
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    for k in (1, 2):
        assert after[f"eval_module_{k}_perplexity"] < 0.5 * before[f"eval_module_{k}_perplexity"]
        assert after[f"eval_module_{k}_perplexity"] < vocab_size
    assert after["eval_best_module"] in (1, 2)
    assert (tmp_path / "stage-02" / "config.json").exists()


def padded_classifier(kind):
    """A BERT classifier, or a GPT-2 classifier (last non-padding token) whose pad id is not 0."""
    small = dict(vocab_size=40, num_labels=2, pad_token_id=3)
    if kind == "gpt2":
        config = GPT2Config(n_embd=16, n_layer=3, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **small)
        return GPT2ForSequenceClassification(config)
    return BertForSequenceClassification(
        BertConfig(
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            **small,
        )  # fmt: skip
    )


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_prefix_cache_on_padded_text_batches_matches_recomputing(kind, tmp_path):
    torch.manual_seed(0)
    lengths = torch.randint(3, 12, (48,)).tolist()
    rows = {
        "input_ids": [torch.randint(5, 40, (n,)).tolist() for n in lengths],
        "label": torch.randint(0, 2, (48,)).tolist(),
    }
    dataset = Dataset.from_dict(rows)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=__import__("tokenizers").Tokenizer(
            __import__("tokenizers").models.WordLevel({"[PAD]": 3, "[UNK]": 1}, unk_token="[UNK]")
        ),
        pad_token="[PAD]",
    )
    collator = DataCollatorWithPadding(tokenizer)
    finals = {}
    for cache in ("always", "never"):
        torch.manual_seed(0)
        model = TRGLModel.from_base(padded_classifier(kind), TRGLConfig(num_modules=3))
        run_args = args(
            tmp_path / cache,
            trgl_mode="sequential",
            num_train_epochs=1,
            trgl_prefix_cache=cache,
            trgl_save_stages=False,
            optim="sgd",
            learning_rate=0.1,
        )
        TRGLTrainer(model=model, args=run_args, train_dataset=dataset, data_collator=collator).train()
        finals[cache] = model.state_dict()
    for name, tensor in finals["always"].items():  # float-level differences only (pad positions hold other values)
        torch.testing.assert_close(finals["never"][name], tensor, rtol=1e-4, atol=5e-5, msg=name)


@pytest.mark.parametrize("mode", ["parallel", "multilap"])
def test_lm_modes_run(mode, tmp_path):
    dataset, vocab_size = char_blocks()
    model = TRGLModel.from_base(tiny_gpt2(vocab_size), TRGLConfig(num_modules=2))
    output = TRGLTrainer(model=model, args=args(tmp_path, trgl_mode=mode, max_steps=4), train_dataset=dataset).train()
    # max_steps counts per module outside parallel mode: 2 laps x 2 modules x 2 steps
    assert output.global_step == (4 if mode == "parallel" else 8)
    assert torch.isfinite(torch.tensor(output.training_loss))


def test_perplexity_is_averaged_per_token_across_uneven_batches(tmp_path):
    dataset, vocab_size = char_blocks()
    dataset = dataset.select(range(10))
    model = TRGLModel.from_base(tiny_gpt2(vocab_size), TRGLConfig(num_modules=2))
    trainer = TRGLTrainer(model=model, args=args(tmp_path, per_device_eval_batch_size=4), train_dataset=dataset)
    metrics = trainer.evaluate(dataset)
    model.eval()
    with torch.no_grad():
        batch = dataset[:]
        steps = list(model.iter_modules(input_ids=batch["input_ids"], labels=batch["labels"]))
    for k, step in enumerate(steps, start=1):
        assert metrics[f"eval_module_{k}_loss"] == pytest.approx(step.task_loss.item(), rel=1e-5)
