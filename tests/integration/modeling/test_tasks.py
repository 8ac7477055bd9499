"""Tasks in real runs: each task's metrics and per-module losses are reported (the losses and the label checks:
tests/unit/modeling/test_tasks.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

SMALL = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


def bert(num_labels: int, problem_type: str | None = None) -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**SMALL, num_labels=num_labels, problem_type=problem_type)).eval()


RUNS = {
    "multi_label_classification": (3, lambda rng: (rng.random((16, 3)) > 0.5).astype(np.float32).tolist(),
                                   {"eval_module_1_f1", "eval_module_2_exact_match", "eval_best_module_f1"}),
    "regression": (1, lambda rng: rng.normal(size=16).astype(np.float32).tolist(),
                   {"eval_module_1_mse", "eval_module_2_mse", "eval_best_module_mse"}),
}  # fmt: skip


@pytest.mark.parametrize("task", sorted(RUNS))
def test_a_run_reports_the_tasks_metrics_and_loss_per_module(task, tmp_path):
    num_labels, make_labels, expected_keys = RUNS[task]
    base = bert(num_labels, "multi_label_classification" if task != "regression" else None)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2))
    rng = np.random.default_rng(0)
    data = Dataset.from_dict({"input_ids": rng.integers(2, 40, (16, 6)).tolist(), "labels": make_labels(rng)})
    args = TRGLTrainingArguments(output_dir=str(tmp_path), trgl_mode="parallel", max_steps=2,
                                 per_device_train_batch_size=8, report_to=[], save_strategy="no")  # fmt: skip
    trainer = TRGLTrainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    trainer.train()
    metrics = trainer.evaluate()
    assert expected_keys | {"eval_module_2_loss"} <= set(metrics)
    with torch.no_grad():
        steps = list(
            model.eval().iter_modules(input_ids=torch.tensor(data["input_ids"]), labels=torch.tensor(data["labels"]))
        )
    for k, step in enumerate(steps, start=1):
        assert metrics[f"eval_module_{k}_loss"] == pytest.approx(step.task_loss.item(), rel=1e-4)
    if task == "regression":
        best = min((1, 2), key=lambda k: metrics[f"eval_module_{k}_mse"])
        assert metrics["eval_best_module"] == best
