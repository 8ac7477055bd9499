"""Downstream SST-2 fine-tuning of pretrained encoder folders (`benchmarks.mlm_pretraining`): the fixed fine-tuning
sample, a disjoint selection set that chooses the fine-tune (never validation), and one plain `Trainer` fine-tune."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import data
from benchmarks.common.env import log


def sst2(opts, tokenizer):
    """The fixed SST-2 fine-tuning sample, a disjoint selection set (both from GLUE's train split, stratified, seed 0)
    and validation, tokenized with the Shakespeare WordPiece tokenizer."""
    size = opts.ft_train_size + opts.ft_select_size
    pool, validation, _ = data.sst2_glue(None if opts.quick else Path(opts.sst2_dir), size, 0)
    parts = pool.train_test_split(test_size=opts.ft_select_size, stratify_by_column="label", seed=0)

    def encode(split):
        return split.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=opts.block_size),
                         batched=True, remove_columns=["idx", "sentence"])  # fmt: skip

    train, select, validation = encode(parts["train"]), encode(parts["test"]), encode(validation)
    tokens = [t for row in validation["input_ids"] for t in row[1:-1]]

    def majority(split):
        return float(max(np.mean(split["label"]), 1 - np.mean(split["label"])))

    info = {"train_rows": len(train), "select_rows": len(select), "validation_rows": len(validation),
            "select_majority": majority(select), "validation_majority": majority(validation),
            "validation_unk_share": sum(t == tokenizer.unk_token_id for t in tokens) / max(1, len(tokens)),
            "validation_tokens_per_sentence": len(tokens) / max(1, len(validation))}  # fmt: skip
    return train, select, validation, info


def fine_tune(folder: str, tokenizer, train, validation, opts, work: Path) -> dict[str, Any]:
    import transformers as hf

    hf.set_seed(opts.seed)  # the new pooler and classifier
    model = hf.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    args = hf.TrainingArguments(output_dir=str(work / "ft"), num_train_epochs=opts.ft_epochs, learning_rate=opts.ft_lr,
                             per_device_train_batch_size=opts.ft_batch_size, per_device_eval_batch_size=128,
                             weight_decay=0.01, warmup_steps=opts.ft_warmup_steps, lr_scheduler_type="linear",
                             max_grad_norm=1.0, seed=opts.seed, data_seed=opts.seed, report_to="none",
                             train_sampling_strategy="group_by_length", save_strategy="no", eval_strategy="no",
                             use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)  # fmt: skip

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    trainer = hf.Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                         data_collator=hf.DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)  # fmt: skip
    started = time.perf_counter()
    output = trainer.train()
    metrics = trainer.evaluate()
    return {"accuracy": metrics["eval_accuracy"], "steps": output.global_step,
            "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def select_fine_tune(candidates: dict[str, str], tokenizer, train, select, opts, work: Path) -> dict[str, Any]:
    """Every (lr, epochs) of `--ft-grid` fine-tunes every candidate folder on the sample and is scored on the selection
    set (never on validation); the best mean accuracy wins (the first in the grid on a tie)."""
    scores = []
    for spec in opts.ft_grid:
        lr, epochs = (float(x) for x in spec.split(":"))
        trial = argparse.Namespace(**{**vars(opts), "ft_lr": lr, "ft_epochs": epochs})
        accs = {name: fine_tune(folder, tokenizer, train, select, trial, work) for name, folder in candidates.items()}
        scores.append({"lr": lr, "epochs": epochs, "accuracy": {k: v["accuracy"] for k, v in accs.items()},
                       "mean": float(np.mean([v["accuracy"] for v in accs.values()])),
                       "wall_s": round(sum(v["wall_s"] for v in accs.values()), 1)})  # fmt: skip
        log(f"fine-tune selection lr {lr:g}, {epochs:g} epochs: {scores[-1]['accuracy']}")
    best = max(scores, key=lambda s: s["mean"])
    return {"layers": opts.ft_select_layers, "seed": opts.seed, "candidates": list(candidates), "scores": scores,
            "chosen": {"lr": best["lr"], "epochs": best["epochs"]}}  # fmt: skip
