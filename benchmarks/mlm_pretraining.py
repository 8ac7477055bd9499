"""Is greedy TRGL pretraining of a small masked-LM encoder worth it? Sequential TRGL vs VanGL vs end-to-end at equal
optimizer steps per layer and at equal wall time on Tiny Shakespeare, over seeds, then the stages fine-tuned on SST-2.

    python -m benchmarks.mlm_pretraining            # the committed configuration (~26 min: 1 thread, 2 idle cores)
    python -m benchmarks.mlm_pretraining --quick    # smoke run: synthetic text and sentences, a tiny BERT (seconds)
    python -m benchmarks.mlm_pretraining --render-only benchmarks/results/mlm_pretraining.json   # the report again

Model and data: `recipes/pretrain_mlm.py`'s `build` (imported with `recipes/` on `sys.path`): blocks of
`--block-size` tokens of the first 95% of `tiny_shakespeare/input.txt` (the last 5% held out) and a `BertForMaskedLM`
from a config, with the WordPiece tokenizer in `benchmarks/assets/` (`--tokenizer`; trained once by the recipe on
that 95%; `train` trains one, but WordPiece training is not deterministic across processes: tokenizers#1794). Per seed
(`--seeds`) every arm starts from the same weights (`set_seed(seed)`) and reads one stream of seeded shuffles of the
training blocks, masked once by `DataCollatorForLanguageModeling` (15%, seeded), read in order. Equal steps per layer:
end-to-end (`Trainer`) takes `--steps` steps on the stream's first `--steps` batches; TRGL and VanGL (`TRGLTrainer`,
sequential, K = `--num-modules`, native heads, default tau) take `--steps` steps per module on the same batches and
masks. Equal wall time: "E2E (equal time)" takes round(steps x TRGL's train wall time / E2E's) steps (same seed; at
most `--time-cap` x steps), reading the same stream further. AdamW, lr, weight decay 0.01, cosine schedule with
warm-up, max_grad_norm 1.0 everywhere.

Masked-token perplexity (exp of the mean cross-entropy over the masked tokens of the held-out blocks, masked once
with another seed: the same masks for every model and seed) comes from one function on every saved stage
(`AutoModelForMaskedLM`) and on the end-to-end models; the library's `evaluate()` per module is stored beside (stage k
must equal head k). End-to-end's layers 1..d are probed by a fresh MLM head per depth trained `--steps` steps on the
same batches on the frozen encoder (masked tokens only).

Downstream, at the depths `--ft-layers` (default: the first and the last stage's), each stage folder, the
end-to-end models' first d layers and the untrained weights cut the same way load with
`AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)` and are fine-tuned (plain `Trainer`) on a
stratified sample of SST-2's GLUE train split (`--ft-train-size`, seed 0), then scored on SST-2 validation (872).
The (lr, epochs) comes from `--ft-grid`, chosen without validation: on `--ft-select-size` other GLUE train rows
(disjoint from the sample), the untrained weights and end-to-end's first `--ft-select-layers` layers (default: the
middle stage's; first seed) are fine-tuned with every setting; the best mean accuracy there wins (TRGL plays no
part). SST-2 goes through the Shakespeare tokenizer (its share of [UNK] tokens is reported).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import data, env, report
from benchmarks.common.env import log
from benchmarks.common.sst2_finetune import fine_tune, select_fine_tune, sst2
from benchmarks.reports import mlm_pretraining as mlm_report

TOKENIZER = env.REPO_ROOT / "benchmarks" / "assets" / "mlm_shakespeare_wordpiece_4000"  # WordPiece training varies
STEPS = 100  # optimizer steps per module: three seeds of every arm take about 26 minutes on 2 idle CPU cores
FT_GRID = ["3e-4:3", "1e-3:3", "1e-3:6"]  # the fine-tune settings (lr:epochs) the selection set chooses from


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


def end_to_end(name: str, base, stream, evalset, depths: list[int], opts, work: Path, probe: bool) -> dict[str, Any]:
    from transformers import Trainer, TrainingArguments, default_data_collator

    model = copy.deepcopy(base)
    trainer = Trainer(model=model, args=training_args(TrainingArguments, opts, work / name), train_dataset=stream,
                      data_collator=default_data_collator)  # fmt: skip
    started = time.perf_counter()
    output = trainer.train()
    wall = time.perf_counter() - started
    final = model_loss(model, evalset.with_format("torch"), opts.eval_batch_size)
    log(f"{name}: {output.global_step} steps in {wall:.0f}s; perplexity {final['perplexity']:.2f}")
    probes = probe_heads(model, stream, evalset, depths, opts) if probe else []
    modules = [{"layers": d, "folder": str(truncate(model, d, work / name / f"layers-{d:02d}"))} for d in depths]
    for m, p in zip(modules, probes):
        m["probe"] = p
    return {"arm": name, "optimizer_steps": output.global_step, "train_wall_s": round(wall, 1), "final": final,
            "modules": modules, "train_log": [e for e in trainer.state.log_history if "loss" in e]}  # fmt: skip


def run_seed(seed: int, base, tokenizer, splits, evalset, sst, opts, work: Path) -> tuple[list, dict | None]:
    """All arms of one seed: pretraining, perplexities, (first seed) the fine-tune selection, the SST-2 fine-tunes."""
    from transformers import set_seed

    opts = argparse.Namespace(**{**vars(opts), "seed": seed})
    work = work / f"seed-{seed}"
    set_seed(seed)
    base = type(base)(base.config)  # what `build` makes after `set_seed(seed)`
    rows, cap = opts.steps * opts.batch_size, math.ceil(opts.time_cap * opts.steps)
    long_stream = masked(splits["train"], tokenizer, 0.15, seed, rows=cap * opts.batch_size)
    stream = long_stream.select(range(rows))  # the prefix every equal-steps arm reads
    arms = [module_wise("TRGL", True, base, tokenizer, stream, evalset, opts, work),
            module_wise("VanGL", False, base, tokenizer, stream, evalset, opts, work)]  # fmt: skip
    depths = [m["layers"] for m in arms[0]["modules"]]
    ft_layers = opts.ft_layers or [depths[0], depths[-1]]
    arms.append(end_to_end("E2E", base, stream, evalset, depths, opts, work, opts.probe))
    steps = min(cap, round(opts.steps * arms[0]["train_wall_s"] / arms[2]["train_wall_s"]))
    timed = argparse.Namespace(**{**vars(opts), "steps": steps})
    arms.append(end_to_end("E2E (equal time)", base, long_stream.select(range(steps * opts.batch_size)), evalset,
                           ft_layers, timed, work, False))  # fmt: skip
    arms[-1]["stream_epochs"] = steps * opts.batch_size / len(splits["train"])
    arms.append({"arm": "no pretraining", "modules": [{"layers": d, "folder": str(truncate(
        base, d, work / "init" / f"layers-{d:02d}"))} for d in depths]})  # fmt: skip
    selection = None
    if len(opts.ft_grid) > 1 and seed == opts.seeds[0]:
        opts.ft_select_layers = opts.ft_select_layers or depths[len(depths) // 2 - 1]
        candidates = {arm["arm"]: m["folder"] for arm in (arms[4], arms[2]) for m in arm["modules"]
                      if m["layers"] == opts.ft_select_layers}  # fmt: skip
        selection = select_fine_tune(candidates, tokenizer, sst[0], sst[1], opts, work)
        opts.ft_lr, opts.ft_epochs = selection["chosen"]["lr"], selection["chosen"]["epochs"]
    for arm in arms:
        for m in arm["modules"]:
            folder = m.pop("folder")
            if m["layers"] in ft_layers:
                m["sst2"] = fine_tune(folder, tokenizer, sst[0], sst[2], opts, work)
                log(f"seed {seed} {arm['arm']} layers 1..{m['layers']}: SST-2 accuracy {m['sst2']['accuracy']:.4f}")
    return arms, selection


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", default=str(env.shared_data("tiny_shakespeare") or "") + "/input.txt")
    parser.add_argument("--sst2-dir", default=str(env.shared_data("sst2")))
    parser.add_argument("--out-dir", default=None, help="default benchmarks/results (a temporary folder with --quick)")
    sizes = {"hidden-size": 128, "layers": 8, "heads": 4, "vocab-size": 4000, "block-size": 64, "num-modules": 4,
             "warmup-steps": 25, "batch-size": 16, "eval-batch-size": 64, "ft-train-size": 2000,
             "ft-batch-size": 32, "ft-warmup-steps": 10}  # fmt: skip
    for name, default in sizes.items():
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps per module (and for end-to-end)")
    parser.add_argument("--time-cap", type=float, default=3.0, help="E2E (equal time) takes at most this x --steps")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tokenizer", default=str(TOKENIZER), help="a saved tokenizer, or 'train' to train one here")
    parser.add_argument("--ft-select-size", type=int, default=1000, help="GLUE train rows that choose the fine-tune")
    parser.add_argument("--ft-grid", nargs="+", default=FT_GRID, help="fine-tune settings lr:epochs to choose from")
    parser.add_argument("--ft-select-layers", type=int, default=None, help="the depth the fine-tune is chosen at")
    parser.add_argument("--ft-layers", type=int, nargs="*", default=None, help="depths fine-tuned (first, last)")
    parser.add_argument("--no-probe", dest="probe", action="store_false", help="skip end-to-end's per-depth probes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="1: two threads slow down ~10x when the CPU is shared")
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
        opts.ft_train_size, opts.ft_select_size = 32, 16
        opts.ft_grid, opts.ft_batch_size, opts.ft_warmup_steps, opts.threads = ["1e-3:1", "3e-3:1"], 16, 1, 1
        opts.seeds = opts.seeds[:2]
    opts.ft_lr, opts.ft_epochs = (float(x) for x in opts.ft_grid[0].split(":"))
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
        set_seed(opts.seeds[0])
        saved = None if opts.quick or opts.tokenizer == "train" else opts.tokenizer
        base, tokenizer, splits = mlm.build(
            mlm.ModelArguments(hidden_size=opts.hidden_size, num_hidden_layers=opts.layers,
                               num_attention_heads=opts.heads, vocab_size=opts.vocab_size,
                               tokenizer_name_or_path=saved),
            mlm.DataArguments(train_file=str(text_file), block_size=opts.block_size))  # fmt: skip
        evalset = masked(splits["validation"], tokenizer, 0.15, opts.seeds[0] + 1)
        *sst, ft_info = sst2(opts, tokenizer)
        rows = opts.steps * opts.batch_size
        fingerprint = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
        info = {"train_blocks": len(splits["train"]), "eval_blocks": len(splits["validation"]), "stream_rows": rows,
                "stream_epochs": rows / len(splits["train"]), "vocabulary": len(tokenizer), "sst2": ft_info,
                "parameters": sum(p.numel() for p in base.parameters()), "tokenizer_sha256": fingerprint,
                "tokenizer": saved and os.path.relpath(saved, env.REPO_ROOT)}  # fmt: skip
        log(f"data: {info}")
        runs, selection = [], None
        for seed in opts.seeds:
            arms, chosen = run_seed(seed, base, tokenizer, splits, evalset, sst, opts, work)
            if chosen:
                selection = chosen
                opts.ft_lr, opts.ft_epochs = chosen["chosen"]["lr"], chosen["chosen"]["epochs"]
            runs.append({"seed": seed, "results": arms})
        info["eval_masked_tokens"] = runs[0]["results"][0]["modules"][0]["masked_tokens"]
    result = {"benchmark": "mlm_pretraining", "quick": opts.quick,
              "config": {k: v for k, v in vars(opts).items() if k not in ("text", "sst2_dir", "out_dir")},
              "data": info, "ft_selection": selection, "runs": runs, "environment": env.environment(command),
              "total_wall_s": round(time.perf_counter() - env.START, 1)}  # fmt: skip
    report.write_json(out_dir / "mlm_pretraining.json", result, indent=1)
    report.write_atomically(out_dir / "mlm_pretraining.md", mlm_report.markdown(result))
    log(f"wrote mlm_pretraining.json/.md to {out_dir}")
    print(mlm_report.markdown(result))
    return result


if __name__ == "__main__":
    main()
