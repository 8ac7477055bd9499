"""Tasks: each head's loss is transformers' own for the base model's problem type; labels are checked per task."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from trgl_hf import TRGLConfig, TRGLModel, get_task
from trgl_hf.training.data import check_labels

SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


def bert(num_labels: int, problem_type: str | None = None) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**SMALL, num_labels=num_labels, problem_type=problem_type)).eval()


def token_inputs(batch: int = 4):
    torch.manual_seed(1)
    input_ids = torch.randint(2, 40, (batch, 6))
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


LABELS = {
    "single_label_classification": (3, None, lambda: torch.tensor([0, 2, 1, 2])),
    "multi_label_classification": (3, "multi_label_classification",
                                   lambda: torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]]).float()),
    "regression": (1, None, lambda: torch.tensor([0.5, -1.0, 2.0, 0.1])),
}  # fmt: skip


@pytest.mark.parametrize("task", sorted(LABELS))
def test_a_single_module_without_transport_has_transformers_own_loss(task):
    num_labels, problem_type, make_labels = LABELS[task]
    base = bert(num_labels, problem_type)
    inputs, labels = token_inputs(), make_labels()
    with torch.no_grad():
        expected = base(**inputs, labels=labels).loss
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=1, use_transport=False)).eval()
    assert model.config.task == task
    with torch.no_grad():
        output = model(**inputs, labels=labels)
    torch.testing.assert_close(output.loss, expected)


def test_causal_lm_loss_is_transformers_own():
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2)).eval()
    inputs = token_inputs()
    labels = inputs["input_ids"].clone()
    labels[0, 4:] = -100
    with torch.no_grad():
        expected = base(**inputs, labels=labels).loss
        loss = (
            TRGLModel.from_base(base, TRGLConfig(num_modules=1, use_transport=False))
            .eval()(**inputs, labels=labels)
            .loss
        )
    assert TRGLModel.from_base(base, TRGLConfig(num_modules=1)).config.task == "causal_lm"
    torch.testing.assert_close(loss, expected)


def test_label_smoothing_is_refused_without_cross_entropy():
    with pytest.raises(ValueError, match="label_smoothing"):
        TRGLModel.from_base(bert(1), TRGLConfig(num_modules=1, label_smoothing=0.1))


@pytest.mark.parametrize(
    ("task", "labels", "message"),
    [
        ("single_label_classification", [0.5, 1.0], "problem_type='multi_label_classification'"),
        ("single_label_classification", [[1, 0, 1], [0, 1, 0]], "multi_label_classification"),
        ("single_label_classification", ["cat", "dog"], "non-numeric"),
        ("single_label_classification", [-100, -100], "every label is -100"),
        ("single_label_classification", [0, 3], r"labels in \[0, 3\]"),
        ("multi_label_classification", [[1, 0], [0, 1]], "shape"),
        ("multi_label_classification", [[2, 0, 1], [0, 1, 0]], "outside"),
        ("regression", [[0.5, 1.0], [1.0, 2.0]], "target values per example"),
        ("regression", [float("nan"), 1.0], "NaN"),
    ],
)
def test_labels_a_task_cannot_train_on_are_refused(task, labels, message):
    num_labels = 1 if task == "regression" else 3
    with pytest.raises(ValueError, match=message):
        check_labels(Dataset.from_dict({"labels": labels}), num_labels, "train_dataset", task)


def test_single_label_loss_applies_label_smoothing():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(
        get_task("single_label_classification").loss(logits, labels, 0.1),
        torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1),
    )
