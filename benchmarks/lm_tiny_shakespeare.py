"""Tiny Shakespeare, character-level GPT-2 trained from scratch: sequential TRGL vs VanGL vs end-to-end.

    python benchmarks/lm_tiny_shakespeare.py            # the committed configuration (~15 min on 2 shared CPU cores)
    python benchmarks/lm_tiny_shakespeare.py --quick    # smoke run (a minute or two), temporary outputs

Data (`$SHARED_DATA/tiny_shakespeare/input.txt`, default `/work/shared/data/tiny_shakespeare`): the usual 90/5/5 split
by character of the data README (train `[:1003854]`, validation `[1003854:1059624]`, test `[1059624:]`), a character
vocabulary (the sorted set of characters of the whole file, 65 symbols), non-overlapping blocks of 128 characters
(the tail shorter than a block is dropped). The loss is the next-character cross-entropy over the 127 predicted
positions of each block (`labels = input_ids`, shifted inside the library), in nats; perplexity = exp(loss).

Model: `GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=128, n_head=4, n_positions=128, dropout 0,
tie_word_embeddings=False))`, built under `torch.manual_seed(seed)` so every method starts from the same weights.
Input and output embeddings are untied because every TRGL module gets its own copy of the LM head (final LayerNorm +
output projection); untying keeps E2E the same network as the TRGL model with K = 1.

- TRGL (K = 2 by default; `--num-modules 2 4` adds K = 4, one layer per module, which does not fit the ~15 minute
  budget on 2 shared CPU cores): `TRGLModel.from_base(model, TRGLConfig(num_modules=K, tau=tau))`, native heads,
  `trgl_mode="sequential"`, `max_steps` optimizer steps per module (the frozen prefix's outputs are cached).
- VanGL: the same with `use_transport=False`.
- E2E: `TRGLConfig(num_modules=1, use_transport=False)`: the whole network and its own head, `max_steps` steps.

Evaluation: `TRGLTrainer.evaluate` on the validation and test blocks (`eval_module_{k}_loss` and
`eval_module_{k}_perplexity` for every module). The library averages per-batch mean losses; the evaluation batch size
divides the number of blocks, so that average is exactly the per-token mean.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
START = time.perf_counter()
CUTS = {"train": (0, 1003854), "validation": (1003854, 1059624), "test": (1059624, None)}


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


def load_blocks(path: Path, block_size: int, limits: dict[str, int | None]):
    from datasets import Dataset

    text = path.read_text(encoding="utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    splits, info = {}, {}
    for name, (start, end) in CUTS.items():
        part = text[start:end]
        ids = [index[c] for c in part]
        blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]
        if limits.get(name) is not None:
            blocks = blocks[: limits[name]]
        splits[name] = Dataset.from_dict({"input_ids": blocks, "labels": blocks}).with_format("torch")
        info[name] = {"characters": len(part), "blocks": len(blocks)}
    return splits, vocab, info


def build_base(vocab_size: int, opts):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(opts.seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=opts.block_size,
        n_embd=opts.n_embd,
        n_layer=opts.n_layer,
        n_head=opts.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    return GPT2LMHeadModel(config)


def run_method(
    name: str, num_modules: int, use_transport: bool, data, vocab_size: int, opts, work_dir: Path
) -> dict[str, Any]:
    from transformers.utils import logging as hf_logging

    from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

    hf_logging.set_verbosity_error()
    base = build_base(vocab_size, opts)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=num_modules, tau=opts.tau, use_transport=use_transport))
    training_args = TRGLTrainingArguments(
        output_dir=str(work_dir / name.replace(" ", "_")),
        trgl_mode="sequential",
        max_steps=opts.steps,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.eval_batch_size,
        learning_rate=opts.lr,
        weight_decay=0.01,
        lr_scheduler_type="cosine",
        warmup_steps=opts.warmup_steps,
        max_grad_norm=1.0,
        seed=opts.seed,
        data_seed=opts.seed,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=25,
        trgl_save_stages=False,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = TRGLTrainer(model=model, args=training_args, train_dataset=data["train"])
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
                "layers": sum(model.config.split[:k]),
                "validation_loss": val[f"validation_module_{k}_loss"],
                "validation_perplexity": val[f"validation_module_{k}_perplexity"],
                "test_loss": test[f"test_module_{k}_loss"],
                "test_perplexity": test[f"test_module_{k}_perplexity"],
            }
        )
    best = min(modules, key=lambda m: (m["validation_loss"], m["module"]))
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
        "best_module_validation_perplexity": best["validation_perplexity"],
        "best_module_test_perplexity": best["test_perplexity"],
        "last_module_test_perplexity": modules[-1]["test_perplexity"],
        "trainer_eval_loss_last_module": {"validation": val["validation_loss"], "test": test["test_loss"]},
        "train_log": train_logs,
    }
    log(
        f"{name}: per-module validation perplexity {[round(m['validation_perplexity'], 3) for m in modules]}, "
        f"test {[round(m['test_perplexity'], 3) for m in modules]}"
    )
    del trainer, model, base
    gc.collect()
    return result


def environment(command: str) -> dict[str, Any]:
    import datasets
    import transformers

    import trgl_hf

    return {
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "trgl_hf": getattr(trgl_hf, "__version__", None),
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = {}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    for ax, split in zip(axes, ("validation", "test")):
        for r in report["results"]:
            layers = [m["layers"] for m in r["modules"]]
            values = [m[f"{split}_perplexity"] for m in r["modules"]]
            if r["method"] == "E2E":
                ax.axhline(values[0], color="black", linewidth=0.8, linestyle=":")
                ax.plot(layers, values, "*", markersize=15, color="black", label="E2E (all layers)")
                continue
            kind, k = r["method"].split()
            color = colors.setdefault(k, palette[len(colors) % len(palette)])
            style = "-o" if kind == "TRGL" else "--s"
            ax.plot(layers, values, style, color=color, alpha=0.9 if kind == "TRGL" else 0.6, label=r["method"])
        ax.set_title(f"{split}")
        ax.set_xlabel("layers below the module's head")
        ax.set_xticks(range(1, report["config"]["n_layer"] + 1))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("perplexity per character")
    axes[1].legend(loc="upper right", fontsize=8)
    cfg = report["config"]
    fig.suptitle(
        f"Tiny Shakespeare, char-level GPT-2 ({cfg['n_layer']} layers x {cfg['n_embd']}): perplexity per "
        f"module, {cfg['steps']} steps per module (E2E: {cfg['steps']} steps)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict[str, Any]) -> str:
    cfg, env = report["config"], report["environment"]
    d = report["data"]
    lines = [
        "# Tiny Shakespeare, character-level GPT-2 from scratch: sequential TRGL vs VanGL vs end-to-end",
        "",
        "```bash",
        env["command"],
        "```",
        "",
        f"Run on {env['date']} with torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['torch_num_threads']} torch thread(s) on a machine with {env['cpu_count']} CPU cores shared with other "
        f"jobs (load average {env['load_average_at_start'][0]:.2f} at start), so wall times are indicative only. "
        f"Total run time {report['total_wall_s']:.0f} s.",
        "",
        f"Data: `tiny_shakespeare/input.txt`, 90/5/5 split by character, {cfg['vocab_size']}-character vocabulary, "
        f"non-overlapping blocks of {cfg['block_size']} characters: {d['train']['blocks']} train, "
        f"{d['validation']['blocks']} validation, {d['test']['blocks']} test blocks. Model: GPT-2 with "
        f"{cfg['n_layer']} layers, n_embd {cfg['n_embd']}, {cfg['n_head']} heads, no dropout, untied embeddings, "
        f"{cfg['parameters']:,} parameters, trained from scratch (same initial weights for every method). "
        f'Training: {cfg["steps"]} optimizer steps per module (TRGL/VanGL, `trgl_mode="sequential"`, frozen prefix '
        f"cached) and {cfg['steps']} steps for E2E (the same code path with K = 1), batch {cfg['batch_size']}, AdamW "
        f"(`{cfg['optim']}`) lr {cfg['lr']}, weight decay 0.01, cosine schedule with {cfg['warmup_steps']} warm-up "
        f"steps, seed {cfg['seed']}. tau = {cfg['tau']:g} (the library default, `halves` schedule: tau / 2 for the "
        "first half of the modules), not tuned. Loss = next-character cross-entropy in nats; perplexity = exp(loss). "
        "These are short runs, far from convergence."
        + (
            ""
            if 4 in cfg["num_modules"]
            else " K = 4 (one layer per module, `--num-modules 2 4`) was left out to "
            "keep the run under ~15 minutes on 2 shared CPU cores."
        ),
        "",
        "## Per module",
        "",
        "| method | module | layers | validation loss | validation perplexity | test loss | test perplexity |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        for m in r["modules"]:
            lines.append(
                f"| {r['method']} | {m['module']} | {m['layers']} | {m['validation_loss']:.4f} | "
                f"{m['validation_perplexity']:.3f} | {m['test_loss']:.4f} | {m['test_perplexity']:.3f} |"
            )
    lines += [
        "",
        "## Summary",
        "",
        "| method | last module test perplexity | best module (by validation) | its test perplexity | optimizer steps"
        " | train wall time (s) | evaluation wall time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['method']} | {r['last_module_test_perplexity']:.3f} | {r['best_module_by_validation']} | "
            f"{r['best_module_test_perplexity']:.3f} | {r['train_steps']} | {r['train_wall_s']:.0f} | "
            f"{r['eval_wall_s']:.0f} |"
        )
    lines += [
        "",
        "![perplexity per module](tiny_shakespeare_gpt2.png)",
        "",
        "Raw numbers (with training logs): `tiny_shakespeare_gpt2.json`.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("SHARED_DATA", "/work/shared/data") + "/tiny_shakespeare")
    parser.add_argument("--out-dir", default=None, help="default benchmarks/results (a temporary folder with --quick)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per module (and for E2E)")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=87, help="divides the 435 evaluation blocks")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument(
        "--num-modules",
        type=int,
        nargs="+",
        default=[2],
        help="K values; 4 (one layer per module) also works but does not fit the time budget",
    )
    parser.add_argument("--tau", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, output to a temporary folder")
    opts = parser.parse_args(argv)
    command = "python " + " ".join(
        [os.path.relpath(sys.argv[0], REPO_ROOT) if sys.argv[0].endswith(".py") else sys.argv[0]]
        + (sys.argv[1:] if argv is None else argv)
    )
    limits: dict[str, int | None] = {}
    if opts.quick:
        opts.steps, opts.warmup_steps, opts.n_embd, opts.eval_batch_size = 10, 2, 32, 29
        limits = {"train": 512, "validation": 87, "test": 87}
    torch.set_num_threads(opts.threads)
    out_dir = (
        Path(opts.out_dir)
        if opts.out_dir
        else (Path(tempfile.mkdtemp(prefix="lm_quick_")) if opts.quick else REPO_ROOT / "benchmarks" / "results")
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    data, vocab, data_info = load_blocks(Path(opts.data_dir) / "input.txt", opts.block_size, limits)
    for name in ("validation", "test"):
        if len(data[name]) % opts.eval_batch_size:
            log(
                f"warning: {len(data[name])} {name} blocks are not a multiple of the evaluation batch "
                f"{opts.eval_batch_size}: the library's per-batch average over-weights the last batch"
            )
    log(f"data: {data_info}, vocabulary {len(vocab)}")
    parameters = sum(p.numel() for p in build_base(len(vocab), opts).parameters())

    results = []
    with tempfile.TemporaryDirectory(prefix="lm_trgl_") as tmp:
        work_dir = Path(tmp)
        results.append(run_method("E2E", 1, False, data, len(vocab), opts, work_dir))
        for k in opts.num_modules:
            results.append(run_method(f"TRGL K={k}", k, True, data, len(vocab), opts, work_dir))
            results.append(run_method(f"VanGL K={k}", k, False, data, len(vocab), opts, work_dir))
    report = {
        "benchmark": "tiny_shakespeare_gpt2",
        "config": {
            "vocab_size": len(vocab),
            "block_size": opts.block_size,
            "n_layer": opts.n_layer,
            "n_embd": opts.n_embd,
            "n_head": opts.n_head,
            "parameters": parameters,
            "steps": opts.steps,
            "warmup_steps": opts.warmup_steps,
            "lr": opts.lr,
            "batch_size": opts.batch_size,
            "eval_batch_size": opts.eval_batch_size,
            "num_modules": opts.num_modules,
            "tau": opts.tau,
            "tau_schedule": "halves",
            "seed": opts.seed,
            "trgl_mode": "sequential",
            "optim": results[0]["optim"],
            "quick": opts.quick,
        },
        "data": data_info,
        "results": results,
        "environment": environment(command),
    }
    report["total_wall_s"] = round(time.perf_counter() - START, 1)
    (out_dir / "tiny_shakespeare_gpt2.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "tiny_shakespeare_gpt2.md").write_text(markdown(report))
    plot(report, out_dir / "tiny_shakespeare_gpt2.png")
    log(f"wrote tiny_shakespeare_gpt2.json/.md/.png to {out_dir}")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
