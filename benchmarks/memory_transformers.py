"""Peak training memory and time per step for two transformers: E2E vs gradient checkpointing vs TRGL (parallel and
sequential with the prefix cache), on the same model and batch.

    python -m benchmarks.memory_transformers            # BERT-base 16 x 128 tokens, ViT (384 x 12) 64 x 32x32
    python -m benchmarks.memory_transformers --quick    # smoke mode: tiny BERT / ViT, K = 2 (seconds)

Memory: one warm-up step (creates the AdamW state), then one traced step under the exact allocator trace of
`benchmarks/common/memory.py`, driven through `TRGLModel.phase` / `iter_modules`. Time: `transformers.Trainer.train()`
(E2E, and E2E after `gradient_checkpointing_enable()`) and `TRGLTrainer.train()` (parallel; sequential with the prefix
cache) on the same model and batch, AdamW, step times from a Trainer callback (the first step of a phase untimed).

Outputs `memory_transformers.json` and `memory_transformers.md` in `--out-dir` (default `benchmarks/results`; a
temporary folder with `--quick`).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import trgl_hf
from benchmarks.common import env, memory, models, steps, timing
from benchmarks.common.env import log, mib
from benchmarks.reports import memory_transformers as report

ADAMW = {"lr": 1e-4, "weight_decay": 0.01}


def make_adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(params), **ADAMW)


def adamw_implementation(optimizer: torch.optim.Optimizer) -> str:
    from torch.optim.optimizer import _default_to_fused_or_foreach

    params = [p for group in optimizer.param_groups for p in group["params"]]
    fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    return "fused" if fused else ("foreach" if foreach else "single-tensor (for-loop)")


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.records: list[dict[str, Any]] = []
        self.module_records: list[dict[str, Any]] = []
        self.notes: dict[str, Any] = {}
        self.scratch = Path(tempfile.mkdtemp(prefix="trgl_memory_transformers_trainer_"))
        self.runs = 0

    def time(self, model, inputs, labels, trgl_mode: str | None = None) -> list[dict[str, Any]]:
        """Step times of `--timed` steps after one warm-up step per phase, from `Trainer.train()`."""
        if self.args.timed <= 0:
            return []
        self.runs += 1
        args = timing.training_args(
            self.scratch / f"run-{self.runs}",
            self.args.timed + 1,
            len(labels),
            optim="adamw_torch",
            trgl_mode=trgl_mode,
            **ADAMW,
        )
        result = timing.timed_train(timing.make_trainer(model, args, timing.FixedBatch(inputs, labels)), warmup=1)
        gc.collect()
        return result["phases"]

    @staticmethod
    def _times(summary: dict[str, Any], phase: dict[str, list[float]] | None) -> dict[str, Any]:
        walls, cpus = (phase["wall_s"], phase["cpu_s"]) if phase else ([], [])
        summary.update(
            step_wall_times_s=[round(t, 3) for t in walls],
            step_cpu_times_s=[round(t, 3) for t in cpus],
            step_wall_s=timing.summary(walls, "mean"),
            step_cpu_s=timing.summary(cpus, "mean"),
        )
        return summary

    def _add(self, model_name: str, mode: str, k: int | None, split, summary, trainable: int, **extra) -> dict:
        record = {
            "model": model_name,
            "mode": mode,
            "K": k,
            "split": split,
            "trainable_param_bytes": trainable,
            **summary,
            **extra,
        }
        self.records.append(record)
        log(
            f"{model_name} {mode}{'' if k is None else f' K={k}'}: peak {mib(record['peak_bytes'])} MiB "
            f"({record['peak_phase']}), CPU {record['step_cpu_s']} s/step"
        )
        return record

    def e2e(self, name: str, spec: dict[str, Any], checkpointing: bool) -> dict:
        inputs, labels = models.transformer_batch(name, spec)
        model = models.build_transformer(spec)
        if checkpointing:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # deprecated alias of activation_checkpointing_enable
                model.gradient_checkpointing_enable()
        optimizer = make_adamw(model.parameters())
        self.notes.setdefault("adamw_implementation", adamw_implementation(optimizer))
        self.notes.setdefault("attn_implementation", {})[name] = model.config._attn_implementation
        step = steps.e2e_step_fn(model, optimizer, inputs, labels)
        summary = memory.measure_step(step, model, optimizer, [*inputs.values(), labels], warmup=True)
        del optimizer, step
        phases = self.time(model, inputs, labels)
        summary = self._times(summary, phases[0] if phases else None)
        record = self._add(
            name,
            "checkpointing" if checkpointing else "e2e",
            None,
            None,
            summary,
            memory.storage_bytes(model.parameters()),
            num_layers=spec["config"]["num_hidden_layers"],
        )
        del model
        gc.collect()
        return record

    def trgl(self, name: str, spec: dict[str, Any], k: int) -> None:
        inputs, labels = models.transformer_batch(name, spec)
        model = trgl_hf.TRGLModel.from_base(
            models.build_transformer(spec), trgl_hf.TRGLConfig(num_modules=k, tau=10.0)
        )
        model.train()
        split = list(model.config.split)
        with model.phase(range(k)):  # parallel: every module, one step
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = make_adamw(params)
            step = steps.trgl_step_fn(model, optimizer, inputs, labels, frozen_heads=False, module_phases=True)
            summary = memory.measure_step(step, model, optimizer, [*inputs.values(), labels], warmup=True)
            trainable = memory.storage_bytes(params)
            del optimizer, step, params
        for param in model.parameters():
            param.grad = None
        phases = self.time(model, inputs, labels, trgl_mode="parallel")
        phase = summary["peak_phase"] or ""
        self._add(
            name,
            "parallel",
            k,
            split,
            self._times(summary, phases[0] if phases else None),
            trainable,
            peak_module=int(phase.split("_")[1]) if phase.startswith("module_") else None,
        )
        gc.collect()
        entries, cached = [], None
        for index in range(k):  # sequential with the prefix cache, built module after module
            if index > 0:
                cached = steps.prefix_output(model, inputs, index, previous=cached, clone=True)
            with model.phase([index], cached_from=index if index else None):
                params = list(model.module_parameters(index))
                optimizer = make_adamw(params)
                step = steps.trgl_step_fn(
                    model, optimizer, inputs, labels, cached=cached, frozen_heads=False, module_phases=True
                )
                persistent = [*inputs.values(), labels] + ([cached] if cached is not None else [])
                summary = memory.measure_step(step, model, optimizer, persistent, warmup=True)
                entry = {
                    "model": name,
                    "K": k,
                    "module": index + 1,
                    "blocks": split[index],
                    "trainable_param_bytes": memory.storage_bytes(params),
                    "cache_bytes": memory.storage_bytes([cached]) if cached is not None else 0,
                    **summary,
                }
                del optimizer, step, params
            entries.append(entry)
            log(f"  {name} sequential K={k} module {index + 1}/{k}: peak {mib(entry['peak_bytes'])} MiB")
            gc.collect()
        phases = self.time(model, inputs, labels, trgl_mode="sequential") or [None] * k
        for entry, phase in zip(entries, phases):
            self.module_records.append(self._times(entry, phase))
        worst = max(entries, key=lambda e: e["peak_bytes"])
        summary = {key: worst[key] for key in worst if key not in ("model", "K", "module", "blocks")}
        cpu, wall = [e["step_cpu_s"] for e in entries], [e["step_wall_s"] for e in entries]
        known = all(t is not None for t in cpu)
        summary.update(
            step_cpu_s=round(statistics.mean(cpu), 3) if known else None,
            step_wall_s=round(statistics.mean(wall), 3) if known else None,
            step_cpu_sum_over_modules_s=round(sum(cpu), 3) if known else None,
            step_wall_sum_over_modules_s=round(sum(wall), 3) if known else None,
            per_module_peak_bytes=[e["peak_bytes"] for e in entries],
            per_module_step_cpu_s=cpu,
        )
        self._add(name, "sequential", k, split, summary, summary["trainable_param_bytes"], peak_module=worst["module"])
        del model, cached, entries
        gc.collect()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny models, K = 2")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--models", nargs="+", default=["bert", "vit"], choices=["bert", "vit"])
    parser.add_argument("--bert-ks", type=int, nargs="+", default=None, help="default 2 4")
    parser.add_argument("--vit-ks", type=int, nargs="+", default=None, help="default 2 4")
    parser.add_argument("--bert-extra-k", type=int, default=6, help="run if time allows (0: never)")
    parser.add_argument("--vit-extra-k", type=int, default=12, help="run if time allows (0: never)")
    parser.add_argument("--budget-min", type=float, default=18.5, help="skip the extra Ks that would not fit")
    parser.add_argument("--timed", type=int, default=2, help="timed steps (after one warm-up step) per configuration")
    parser.add_argument("--no-checkpointing", action="store_true", help="skip the gradient-checkpointing rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render-only", type=Path, default=None, metavar="JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.bert_ks, args.vit_ks = args.bert_ks or [2], args.vit_ks or [2]
        args.bert_extra_k, args.vit_extra_k = 4, 0
        args.timed = 1
    args.bert_ks, args.vit_ks = args.bert_ks or [2, 4], args.vit_ks or [2, 4]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render_only is not None:
        result = json.loads(args.render_only.read_text())
        print(report.write_outputs(result, args.out_dir or args.render_only.parent))
        return result
    env.setup(args.threads, freeze_gc=True)
    out_dir = env.out_dir(args.out_dir, args.quick, "memory_transformers")
    command = env.command_line("memory_transformers", argv)
    log(f"{command}: models {args.models}, out {out_dir}")
    commit_at_start = env.environment()["git_commit"]
    validation = memory.validate_measurement()
    log(f"validation: {json.dumps({k: v['ok'] for k, v in validation.items()})}")
    bench = Bench(args)
    specs = {name: models.transformer_spec(name, args.quick) for name in args.models}
    ks = {"bert": list(args.bert_ks), "vit": list(args.vit_ks)}
    extra = {"bert": args.bert_extra_k, "vit": args.vit_extra_k}
    step_cost: dict[str, float] = {}
    for name in args.models:
        begin = time.perf_counter()
        bench.e2e(name, specs[name], checkpointing=False)
        step_cost[name] = time.perf_counter() - begin  # one E2E configuration
        if not args.no_checkpointing:
            bench.e2e(name, specs[name], checkpointing=True)
        for k in ks[name]:
            bench.trgl(name, specs[name], k)
    skipped = []
    # Extra K (cheaper model first) if the estimate fits in the budget: a TRGL K costs about two E2E configurations.
    for name in sorted(args.models, key=lambda n: step_cost[n]):
        k = extra[name]
        if not k or k in ks[name]:
            continue
        estimate, elapsed = 2.2 * step_cost[name], time.perf_counter() - env.START
        if elapsed + estimate <= 60 * args.budget_min:
            log(f"extra K={k} for {name}: estimated {estimate:.0f} s, elapsed {elapsed:.0f} s")
            bench.trgl(name, specs[name], k)
            ks[name].append(k)
        else:
            skipped.append(
                f"{name} K = {k} (estimated {estimate / 60:.1f} min after {elapsed / 60:.1f} min, budget "
                f"{args.budget_min} min)"
            )
            log("skipped " + skipped[-1])
    result = report.assemble(args, command, bench, validation, specs, ks, skipped, commit_at_start, ADAMW)
    text = report.write_outputs(result, out_dir)
    log(f"wrote {out_dir}")
    print(text)
    return result


if __name__ == "__main__":
    main()
