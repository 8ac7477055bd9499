"""Tiny Shakespeare, character-level GPT-2 trained from scratch: sequential TRGL vs VanGL vs end-to-end.

    python -m benchmarks.lm_tiny_shakespeare            # the committed configuration (~15 min on 2 shared CPU cores)
    python -m benchmarks.lm_tiny_shakespeare --quick    # smoke run on synthetic text (seconds), temporary outputs
    python -m benchmarks.lm_tiny_shakespeare --compare-heads --num-modules 4 --steps 100   # native vs tied heads
    python -m benchmarks.lm_tiny_shakespeare --parallel-memory   # what the head choice costs in memory (~1 min)

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

`--compare-heads`: TRGL only, K = the first `--num-modules`, `aux_head="native"` against `aux_head="tied"` (each
module's own final LayerNorm + one shared output projection trained by module 1), on the base above (untied
embeddings: the shared projection is module 1's `lm_head`) and on the same base with tied embeddings (GPT-2's usual
setting: the projection is the input embedding), in the `--modes` given; validation only (the head is chosen on it);
writes `tiny_shakespeare_heads.json/.md` (`--report-name`).

`--parallel-memory`: the memory side of the head choice, on a vocabulary where it matters (no data needed): peak bytes
of one AdamW step (allocator trace, `benchmarks.common.memory.measure_step`) of a Llama-style decoder built from a
config (vocabulary 32,000, hidden 256, 8 layers, untied `lm_head`, batch 4 x 256 tokens), end-to-end against TRGL
parallel K = 4 with native or tied heads, each with the LM loss on whole logits (`lm_loss_chunk_tokens=10**9`) or
chunked (the default); writes `decoder_heads_parallel_memory.json/.md`.

Evaluation: `TRGLTrainer.evaluate` on the validation and test blocks (`eval_module_{k}_loss` and
`eval_module_{k}_perplexity` for every module). The library averages per-batch mean losses; the evaluation batch size
divides the number of blocks, so that average is exactly the per-token mean.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import data, env, models, report
from benchmarks.common.env import log
from benchmarks.reports import lm_tiny_shakespeare as lm_report
from benchmarks.reports.decoder_heads_memory import parallel_memory
from benchmarks.reports.lm_tiny_shakespeare import head_result, heads_markdown


def build_base(vocab_size: int, opts, tie_embeddings: bool = False):
    """The benchmark's GPT-2 (untied embeddings), or the same configuration with tied embeddings (same seed)."""
    base = models.build_gpt2(vocab_size, opts.block_size, opts.n_embd, opts.n_layer, opts.n_head, opts.seed)
    if not tie_embeddings:
        return base
    import torch
    from transformers import GPT2LMHeadModel

    config = base.config
    config.tie_word_embeddings = True
    torch.manual_seed(opts.seed)
    return GPT2LMHeadModel(config)


def run_method(
    name: str,
    num_modules: int,
    use_transport: bool,
    data,
    vocab_size: int,
    opts,
    work_dir: Path,
    aux_head: str = "native",
    mode: str = "sequential",
    tie_embeddings: bool = False,
    test: bool = True,
) -> dict[str, Any]:
    from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

    base = build_base(vocab_size, opts, tie_embeddings)
    config = TRGLConfig(num_modules=num_modules, tau=opts.tau, use_transport=use_transport, aux_head=aux_head)
    model = TRGLModel.from_base(base, config)
    training_args = TRGLTrainingArguments(
        output_dir=str(work_dir / name.replace(" ", "_")),
        trgl_mode=mode,
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
    if not test:
        return head_result(name, model, val, output, train_wall, time.perf_counter() - started, aux_head, mode,
                           tie_embeddings)  # fmt: skip
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


def compare_heads(splits, vocab_size: int, opts, command: str, data_info: dict, out_dir: Path) -> dict[str, Any]:
    """`--compare-heads`: native vs tied heads at equal settings (validation perplexity per module)."""
    k = opts.num_modules[0]
    arms = []
    with tempfile.TemporaryDirectory(prefix="lm_trgl_heads_") as tmp:
        for tie in opts.tie_embeddings:
            for mode in opts.modes:
                for head in ("native", "tied"):
                    name = f"TRGL K={k} {mode} {head} ({'tied' if tie else 'untied'} embeddings)"
                    arms.append(run_method(name, k, True, splits, vocab_size, opts, Path(tmp), aux_head=head,
                                           mode=mode, tie_embeddings=tie, test=False))  # fmt: skip
    result = {
        "benchmark": "tiny_shakespeare_heads",
        "config": {
            "vocab_size": vocab_size,
            "block_size": opts.block_size,
            "n_layer": opts.n_layer,
            "n_embd": opts.n_embd,
            "n_head": opts.n_head,
            "steps": opts.steps,
            "warmup_steps": opts.warmup_steps,
            "lr": opts.lr,
            "batch_size": opts.batch_size,
            "eval_batch_size": opts.eval_batch_size,
            "num_modules": k,
            "tau": opts.tau,
            "seed": opts.seed,
            "modes": opts.modes,
            "quick": opts.quick,
        },  # fmt: skip
        "data": data_info,
        "results": arms,
        "environment": env.environment(command),
        "report_name": opts.report_name,
    }
    result["total_wall_s"] = round(time.perf_counter() - env.START, 1)
    report.write_json(out_dir / f"{opts.report_name}.json", result, indent=2)
    report.write_atomically(out_dir / f"{opts.report_name}.md", heads_markdown(result))
    log(f"wrote {opts.report_name}.json/.md to {out_dir}")
    print(heads_markdown(result))
    return result


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
    parser.add_argument("--compare-heads", action="store_true", help="TRGL with native vs tied heads (validation)")
    parser.add_argument("--modes", nargs="+", default=["sequential"], choices=["sequential", "parallel"],
                        help="--compare-heads: training modes")  # fmt: skip
    parser.add_argument("--tie-embeddings", nargs="+", type=int, default=[0, 1], choices=[0, 1],
                        help="--compare-heads: bases with untied (0) and/or tied (1) embeddings")  # fmt: skip
    parser.add_argument("--parallel-memory", action="store_true", help="peak memory of the head choices (no data)")
    parser.add_argument("--report-name", default="tiny_shakespeare_heads", help="--compare-heads: output file name")
    opts = parser.parse_args(argv)
    command = env.command_line("lm_tiny_shakespeare", argv)
    limits: dict[str, int | None] = {}
    cuts = data.SHAKESPEARE_CUTS
    if opts.quick:  # synthetic text: the run needs no data folder
        opts.steps, opts.warmup_steps, opts.n_embd, opts.n_layer, opts.eval_batch_size = 4, 1, 32, 2, 8
        opts.block_size, opts.batch_size = 32, 8
        text, cuts = data.synthetic_text(6000), {"train": (0, 4000), "validation": (4000, 5024), "test": (5024, None)}
    else:
        text = (Path(opts.data_dir) / "input.txt").read_text(encoding="utf-8")
    env.setup(opts.threads)
    out_dir = env.out_dir(opts.out_dir, opts.quick, "lm_tiny_shakespeare")
    if opts.parallel_memory:
        return parallel_memory(opts, command, out_dir)
    splits, vocab, data_info = data.char_blocks(text, opts.block_size, cuts, limits)
    for name in ("validation", "test"):
        if len(splits[name]) % opts.eval_batch_size:
            log(
                f"warning: {len(splits[name])} {name} blocks are not a multiple of the evaluation batch "
                f"{opts.eval_batch_size}: the library's per-batch average over-weights the last batch"
            )
    log(f"data: {data_info}, vocabulary {len(vocab)}")
    if opts.compare_heads:
        return compare_heads(splits, len(vocab), opts, command, data_info, out_dir)
    base = models.build_gpt2(len(vocab), opts.block_size, opts.n_embd, opts.n_layer, opts.n_head, opts.seed)
    parameters = sum(p.numel() for p in base.parameters())

    results = []
    with tempfile.TemporaryDirectory(prefix="lm_trgl_") as tmp:
        work_dir = Path(tmp)
        results.append(run_method("E2E", 1, False, splits, len(vocab), opts, work_dir))
        for k in opts.num_modules:
            results.append(run_method(f"TRGL K={k}", k, True, splits, len(vocab), opts, work_dir))
            results.append(run_method(f"VanGL K={k}", k, False, splits, len(vocab), opts, work_dir))
    result = {
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
            "data": "synthetic text (quick)" if opts.quick else "tiny_shakespeare/input.txt",
        },
        "data": data_info,
        "results": results,
        "environment": env.environment(command),
    }
    result["total_wall_s"] = round(time.perf_counter() - env.START, 1)
    report.write_json(out_dir / "tiny_shakespeare_gpt2.json", result, indent=2)
    report.write_atomically(out_dir / "tiny_shakespeare_gpt2.md", lm_report.markdown(result))
    lm_report.plot(result, out_dir / "tiny_shakespeare_gpt2.png")
    log(f"wrote tiny_shakespeare_gpt2.json/.md/.png to {out_dir}")
    print(lm_report.markdown(result))
    return result


if __name__ == "__main__":
    main()
