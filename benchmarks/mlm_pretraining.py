"""Is greedy TRGL pretraining of a small masked-LM encoder worth it? Sequential TRGL vs VanGL vs end-to-end at equal
optimizer steps on Tiny Shakespeare, then every stage fine-tuned on SST-2.

    python -m benchmarks.mlm_pretraining            # the committed configuration (~15 min on 2 CPU cores)
    python -m benchmarks.mlm_pretraining --quick    # smoke run: synthetic text and sentences, a tiny BERT (seconds)
    python -m benchmarks.mlm_pretraining --render-only benchmarks/results/mlm_pretraining.json   # the report again

Model and data come from the recipe `recipes/pretrain_mlm.py` (its `build`: a WordPiece vocabulary trained on the
first 95% of `tiny_shakespeare/input.txt`, blocks of `--block-size` tokens `[CLS] ... [SEP]`, the last 5% as the
held-out blocks, and a `BertForMaskedLM` built from a config), imported with `recipes/` on `sys.path` as the recipe
tests do (the recipes are scripts, not a package). Every arm starts from the same initial weights (`set_seed(seed)`).

Equal compute, exactly: one stream of `--steps` x `--batch-size` training blocks (seeded shuffles of the training
blocks, epoch after epoch) is masked once by `DataCollatorForLanguageModeling` (15%: 80% [MASK], 10% random, 10%
kept; seeded) and stored, then read in order (`train_sampling_strategy="sequential"`). End-to-end (`transformers.
Trainer` on the `BertForMaskedLM`, its decoder tied to the embeddings as built) takes `--steps` optimizer steps on
it; TRGL and VanGL (`TRGLTrainer`, `trgl_mode="sequential"`, K = `--num-modules`, native heads, tau the library's
default) take `--steps` steps per module on the same batches in the same order with the same masks (K x `--steps`
steps in all, each updating one module and its head). So every encoder layer gets `--steps` AdamW updates from the
same batches in every arm; the measured train wall times are reported beside. Same optimizer settings everywhere
(AdamW, lr, weight decay 0.01, cosine schedule with warm-up, max_grad_norm 1.0; dropout 0.1 as BERT's config has it).

Evaluation: the held-out blocks masked once with another seed, the same masks for every model. Masked-token
perplexity = exp(mean cross-entropy over the masked tokens), computed by one function on every saved stage
(`AutoModelForMaskedLM`) and on the end-to-end model; for TRGL/VanGL the library's own `evaluate()` per module is
stored beside (stage k must equal head k). End-to-end has no head below its last layer: its layers 1..d are probed
by a fresh MLM head per depth (BERT's head, newly initialised, trained `--steps` steps on the same batches on the
frozen encoder's hidden states; the loss on the masked tokens only).

Downstream: each stage folder (and end-to-end's first-d-layers truncation, and the untrained initial weights cut the
same way) loads with `AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)` (a new pooler and
classifier) and is fine-tuned with a plain `Trainer` on a fixed stratified sample of SST-2's GLUE train split
(`--ft-train-size`, seed 0) for `--ft-epochs`, then scored on SST-2 validation (872). The tokenizer is the
Shakespeare WordPiece one: SST-2's words map through it (the share of [UNK] is reported).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import data, env, report
from benchmarks.common.env import log
from benchmarks.reports import mlm_pretraining as mlm_report


def recipe():
    """`recipes/pretrain_mlm.py` (the recipes are scripts: `recipes/` goes on `sys.path`, as in the recipe tests)."""
    path = str(env.REPO_ROOT / "recipes")
    if path not in sys.path:
        sys.path.insert(0, path)
    import pretrain_mlm

    return pretrain_mlm


def masked(blocks, tokenizer, probability: float, seed: int, rows: int | None = None, chunk: int = 32):
    """`blocks` masked once by `DataCollatorForLanguageModeling` (seeded) and stored: in order, or (`rows`) seeded
    shuffles of them one after another, cut at `rows`."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling

    n, rng = len(blocks), np.random.default_rng(seed)
    order = np.arange(n) if rows is None else np.concatenate([rng.permutation(n) for _ in range(-(-rows // n))])
    order = order if rows is None else order[:rows]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=seed)
    ids, columns = blocks["input_ids"], {"input_ids": [], "attention_mask": [], "labels": []}
    for start in range(0, len(order), chunk):
        picked = order[start : start + chunk]
        batch = collator([{"input_ids": ids[i], "attention_mask": [1] * len(ids[i])} for i in picked])
        for name in columns:
            columns[name] += batch[name].tolist()
    return Dataset.from_dict(columns)


def training_args(cls, opts, out: Path, **extra):
    return cls(output_dir=str(out), max_steps=opts.steps, per_device_train_batch_size=opts.batch_size,
               per_device_eval_batch_size=opts.eval_batch_size, learning_rate=opts.lr, weight_decay=0.01,
               lr_scheduler_type="cosine", warmup_steps=opts.warmup_steps, max_grad_norm=1.0, seed=opts.seed,
               data_seed=opts.seed, train_sampling_strategy="sequential", report_to="none", save_strategy="no",
               eval_strategy="no", logging_steps=max(1, opts.steps // 10), use_cpu=True, disable_tqdm=True,
               dataloader_num_workers=0, **extra)  # fmt: skip


@torch.no_grad()
def mlm_loss(predict, evalset, batch_size: int) -> dict[str, float]:
    """Mean cross-entropy over the masked tokens of `evalset` and its perplexity; `predict(input_ids,
    attention_mask, mask)` gives the logits of the masked positions (`mask`: labels != -100)."""
    total, count = 0.0, 0
    for start in range(0, len(evalset), batch_size):
        batch = evalset[start : start + batch_size]
        labels = batch["labels"]
        mask = labels != -100
        logits = predict(batch["input_ids"], batch["attention_mask"], mask)
        total += float(torch.nn.functional.cross_entropy(logits.float(), labels[mask], reduction="sum"))
        count += int(mask.sum())
    return {"loss": total / count, "perplexity": math.exp(total / count), "masked_tokens": count}


def model_loss(model, evalset, batch_size: int) -> dict[str, float]:
    model.eval()
    return mlm_loss(lambda ids, attn, mask: model(input_ids=ids, attention_mask=attn).logits[mask], evalset,
                    batch_size)  # fmt: skip


def stage_perplexity(folder: Path, evalset, batch_size: int) -> dict[str, float]:
    from transformers import AutoModelForMaskedLM

    return model_loss(AutoModelForMaskedLM.from_pretrained(folder), evalset, batch_size)


def truncate(model, layers: int, folder: Path) -> Path:
    """`model` (a `BertForMaskedLM`) with its first `layers` encoder layers and its own head, saved to `folder`."""
    cut = copy.deepcopy(model)
    cut.bert.encoder.layer = cut.bert.encoder.layer[:layers]
    cut.config.num_hidden_layers = layers
    cut.save_pretrained(folder)
    return folder


def module_wise(name: str, transport: bool, base, tokenizer, stream, evalset, opts, work: Path) -> dict[str, Any]:
    from transformers import default_data_collator

    from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

    model = TRGLModel.from_base(copy.deepcopy(base), TRGLConfig(num_modules=opts.num_modules, use_transport=transport))
    args = training_args(TRGLTrainingArguments, opts, work / name, trgl_mode="sequential")
    trainer = TRGLTrainer(model=model, args=args, train_dataset=stream, eval_dataset=evalset,
                          processing_class=tokenizer, data_collator=default_data_collator)  # fmt: skip
    log(f"{name}: {model.num_modules} modules, split {model.config.split}, taus {model.config.module_taus()}")
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    library = trainer.evaluate()
    depths = np.cumsum(model.config.split).tolist()
    modules = []
    for k, layers in enumerate(depths, start=1):
        folder = work / name / f"stage-{k:02d}"
        modules.append({"module": k, "layers": layers, "folder": str(folder),
                        **stage_perplexity(folder, evalset.with_format("torch"), opts.eval_batch_size),
                        "library_perplexity": library[f"eval_module_{k}_perplexity"]})  # fmt: skip
    log(f"{name}: trained in {wall:.0f}s; perplexity per module {[round(m['perplexity'], 2) for m in modules]}")
    return {"arm": name, "use_transport": transport, "split": list(model.config.split),
            "taus": [None if t == float("inf") else t for t in model.config.module_taus()],
            "optimizer_steps": output.global_step, "train_wall_s": round(wall, 1), "modules": modules,
            "train_log": [e for e in trainer.state.log_history if "loss" in e]}  # fmt: skip


def probe_heads(model, stream, evalset, depths: list[int], opts) -> list[dict[str, Any]]:
    """A fresh `BertOnlyMLMHead` per depth, trained `--steps` steps on the frozen encoder's hidden states (the same
    batches and masks, masked positions only), then scored on the evaluation masks."""
    from transformers import get_cosine_schedule_with_warmup
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

    encoder = model.bert.eval().requires_grad_(False)
    torch.manual_seed(opts.seed)
    heads = torch.nn.ModuleList(BertOnlyMLMHead(model.config) for _ in depths)
    heads.apply(model._init_weights)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=opts.lr, weight_decay=0.01)
    schedule = get_cosine_schedule_with_warmup(optimizer, opts.warmup_steps, opts.steps)
    stream, started = stream.with_format("torch"), time.perf_counter()
    for step in range(opts.steps):
        batch = stream[step * opts.batch_size : (step + 1) * opts.batch_size]
        mask = batch["labels"] != -100
        with torch.no_grad():
            states = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             output_hidden_states=True).hidden_states  # fmt: skip
        loss = sum(torch.nn.functional.cross_entropy(head(states[d][mask]), batch["labels"][mask])
                   for head, d in zip(heads, depths))  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        for head in heads:
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    wall = time.perf_counter() - started
    heads.eval()

    def predictor(head, d):
        return lambda ids, attn, mask: head(encoder(input_ids=ids, attention_mask=attn,
                                                    output_hidden_states=True).hidden_states[d][mask])  # fmt: skip

    evalset = evalset.with_format("torch")
    return [{"layers": d, "probe_wall_s": round(wall, 1), **mlm_loss(predictor(h, d), evalset, opts.eval_batch_size)}
            for h, d in zip(heads, depths)]  # fmt: skip


def end_to_end(base, tokenizer, stream, evalset, depths: list[int], opts, work: Path) -> dict[str, Any]:
    from transformers import Trainer, TrainingArguments, default_data_collator

    model = copy.deepcopy(base)
    trainer = Trainer(model=model, args=training_args(TrainingArguments, opts, work / "e2e"), train_dataset=stream,
                      data_collator=default_data_collator)  # fmt: skip
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    final = model_loss(model, evalset.with_format("torch"), opts.eval_batch_size)
    log(f"E2E: trained in {wall:.0f}s; perplexity {final['perplexity']:.2f}; probing layers {depths}")
    probes = probe_heads(model, stream, evalset, depths, opts) if opts.probe else []
    modules = [{"layers": d, "folder": str(truncate(model, d, work / "e2e" / f"layers-{d:02d}"))} for d in depths]
    for m, p in zip(modules, probes):
        m["probe"] = p
    return {"arm": "E2E", "optimizer_steps": output.global_step, "train_wall_s": round(wall, 1), "final": final,
            "modules": modules, "train_log": [e for e in trainer.state.log_history if "loss" in e]}  # fmt: skip


def sst2(opts, tokenizer):
    """The fixed SST-2 training sample and validation, tokenized with the Shakespeare WordPiece tokenizer."""
    train, validation, _ = data.sst2_glue(None if opts.quick else Path(opts.sst2_dir), opts.ft_train_size, 0)

    def encode(split):
        return split.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=opts.block_size),
                         batched=True, remove_columns=["idx", "sentence"])  # fmt: skip

    train, validation = encode(train), encode(validation)
    tokens = [t for row in validation["input_ids"] for t in row[1:-1]]
    info = {"train_rows": len(train), "validation_rows": len(validation),
            "validation_unk_share": sum(t == tokenizer.unk_token_id for t in tokens) / max(1, len(tokens)),
            "validation_tokens_per_sentence": len(tokens) / max(1, len(validation))}  # fmt: skip
    return train, validation, info


def fine_tune(folder: str, tokenizer, train, validation, opts, work: Path) -> dict[str, Any]:
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(opts.seed)  # the new pooler and classifier
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    args = TrainingArguments(output_dir=str(work / "ft"), num_train_epochs=opts.ft_epochs, learning_rate=opts.ft_lr,
                             per_device_train_batch_size=opts.ft_batch_size, per_device_eval_batch_size=128,
                             weight_decay=0.01, warmup_steps=opts.ft_warmup_steps, lr_scheduler_type="linear",
                             max_grad_norm=1.0, seed=opts.seed, data_seed=opts.seed, report_to="none",
                             save_strategy="no", eval_strategy="no", use_cpu=True, disable_tqdm=True,
                             dataloader_num_workers=0)  # fmt: skip

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)  # fmt: skip
    started = time.perf_counter()
    output = trainer.train()
    metrics = trainer.evaluate()
    return {"accuracy": metrics["eval_accuracy"], "steps": output.global_step,
            "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", default=str(env.shared_data("tiny_shakespeare") or "") + "/input.txt")
    parser.add_argument("--sst2-dir", default=str(env.shared_data("sst2")))
    parser.add_argument("--out-dir", default=None, help="default benchmarks/results (a temporary folder with --quick)")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--num-modules", type=int, default=4)
    parser.add_argument("--steps", type=int, default=250, help="optimizer steps per module (and for end-to-end)")
    parser.add_argument("--warmup-steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ft-train-size", type=int, default=2000)
    parser.add_argument("--ft-epochs", type=float, default=1.0)
    parser.add_argument("--ft-lr", type=float, default=1e-4)
    parser.add_argument("--ft-batch-size", type=int, default=32)
    parser.add_argument("--ft-warmup-steps", type=int, default=10)
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip end-to-end's per-depth probes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, output to a temporary folder")
    parser.add_argument("--render-only", default=None, help="rewrite the Markdown report of this JSON result")
    opts = parser.parse_args(argv)
    if opts.render_only:
        result = json.loads(Path(opts.render_only).read_text())
        report.write_atomically(Path(opts.render_only).with_suffix(".md"), mlm_report.markdown(result))
        return result
    command = env.command_line("mlm_pretraining", argv)
    if opts.quick:  # synthetic text and sentences: no data folder needed
        opts.hidden_size, opts.layers, opts.heads, opts.vocab_size, opts.block_size = 16, 2, 2, 120, 16
        opts.num_modules, opts.steps, opts.warmup_steps, opts.batch_size, opts.eval_batch_size = 2, 3, 1, 8, 16
        opts.ft_train_size, opts.ft_batch_size, opts.ft_warmup_steps, opts.threads = 32, 16, 1, 1
    env.setup(opts.threads)
    out_dir = env.out_dir(opts.out_dir, opts.quick, "mlm_pretraining")
    mlm = recipe()
    from transformers import set_seed

    with tempfile.TemporaryDirectory(prefix="trgl_mlm_") as tmp:
        work = Path(tmp)
        text_file = opts.text
        if opts.quick:
            text_file = work / "synthetic.txt"
            text_file.write_text(data.synthetic_text(6000))
        set_seed(opts.seed)
        base, tokenizer, splits = mlm.build(
            mlm.ModelArguments(hidden_size=opts.hidden_size, num_hidden_layers=opts.layers,
                               num_attention_heads=opts.heads, vocab_size=opts.vocab_size),
            mlm.DataArguments(train_file=str(text_file), block_size=opts.block_size))  # fmt: skip
        stream = masked(splits["train"], tokenizer, 0.15, opts.seed, rows=opts.steps * opts.batch_size)
        evalset = masked(splits["validation"], tokenizer, 0.15, opts.seed + 1)
        ft_train, ft_validation, ft_info = sst2(opts, tokenizer)
        info = {"train_blocks": len(splits["train"]), "eval_blocks": len(splits["validation"]),
                "stream_rows": len(stream), "stream_epochs": len(stream) / len(splits["train"]),
                "vocabulary": len(tokenizer), "parameters": sum(p.numel() for p in base.parameters()),
                "sst2": ft_info}  # fmt: skip
        log(f"data: {info}")
        arms = [module_wise("TRGL", True, base, tokenizer, stream, evalset, opts, work),
                module_wise("VanGL", False, base, tokenizer, stream, evalset, opts, work)]  # fmt: skip
        depths = [m["layers"] for m in arms[0]["modules"]]
        info["eval_masked_tokens"] = arms[0]["modules"][0]["masked_tokens"]
        arms.append(end_to_end(base, tokenizer, stream, evalset, depths, opts, work))
        arms.append({"arm": "no pretraining", "modules": [{"layers": d, "folder": str(truncate(
            base, d, work / "init" / f"layers-{d:02d}"))} for d in depths]})  # fmt: skip
        for arm in arms:
            for m in arm["modules"]:
                m["sst2"] = fine_tune(m.pop("folder"), tokenizer, ft_train, ft_validation, opts, work)
                log(f"{arm['arm']} layers 1..{m['layers']}: SST-2 validation accuracy {m['sst2']['accuracy']:.4f}")
    result = {"benchmark": "mlm_pretraining", "quick": opts.quick,
              "config": {k: v for k, v in vars(opts).items() if k not in ("text", "sst2_dir", "out_dir")},
              "data": info, "results": arms, "environment": env.environment(command),
              "total_wall_s": round(time.perf_counter() - env.START, 1)}  # fmt: skip
    report.write_json(out_dir / "mlm_pretraining.json", result, indent=1)
    report.write_atomically(out_dir / "mlm_pretraining.md", mlm_report.markdown(result))
    log(f"wrote mlm_pretraining.json/.md to {out_dir}")
    print(mlm_report.markdown(result))
    return result


if __name__ == "__main__":
    main()
