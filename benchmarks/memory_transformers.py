"""Peak training memory and time per step for two transformers: E2E vs gradient checkpointing vs TRGL (parallel and
sequential with the prefix cache), on the same model and batch.

    python benchmarks/memory_transformers.py            # BERT-base 16 x 128 tokens, ViT (384 x 12) 64 x 32x32
    python benchmarks/memory_transformers.py --quick    # smoke mode: tiny BERT / ViT, K = 2 (seconds)

Memory is measured exactly at the allocator level with the machinery of `benchmarks/memory_speed.py` (imported from
it, unchanged): one training step runs under `torch.profiler` with `profile_memory=True`, which records every CPU
tensor allocation and free; peak = bytes of the training state at the start of the step (weights and buffers, AdamW
state, the batch) + the maximum of the running sum of the step's allocations minus their frees; the blocks alive at
the addresses of the `.grad` tensors before the optimizer step are the gradients, the rest of the step's live bytes
at the peak are activations and temporaries.

Every measured configuration runs: one untraced warm-up step (it creates the AdamW state, so the traced step is a
steady-state step and the optimizer state is counted), one traced step (memory), then `--timed` untraced steps
(time: CPU time of the process with one intra-op thread, and wall time).

Outputs: `memory_transformers.json` (raw numbers and environment) and `memory_transformers.md` (tables) in `--out-dir`
(default `benchmarks/results`; a temporary folder with `--quick`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from memory_speed import (  # noqa: E402
    LOAD_AT_START,
    START,
    StepContext,
    environment,
    fmt,
    log,
    mib,
    optimizer_state,
    storage_bytes,
    timed_steps,
    traced_step,
    validate_measurement,
)
from torch import nn  # noqa: E402

import trgl_hf  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
ADAMW = {"lr": 1e-4, "weight_decay": 0.01}

# ============================================================================ models and batches


def model_spec(name: str, quick: bool) -> dict[str, Any]:
    """Config kwargs and batch shape of each model (tiny versions in --quick mode)."""
    if name == "bert":
        config = dict(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            num_labels=2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        batch = {"batch_size": 16, "seq_len": 128}
        if quick:
            config.update(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=4)
            config["vocab_size"] = 1000
            batch = {"batch_size": 4, "seq_len": 16}
        return {
            "label": "BERT-base encoder (BertForSequenceClassification)",
            "class": "BertForSequenceClassification",
            "config": config,
            "batch": batch,
        }
    if name == "vit":
        config = dict(
            image_size=32,
            patch_size=4,
            hidden_size=384,
            num_hidden_layers=12,
            num_attention_heads=6,
            intermediate_size=1536,
            num_labels=10,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        batch = {"batch_size": 64}
        if quick:
            config.update(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=4)
            batch = {"batch_size": 4}
        return {
            "label": "ViT (ViTForImageClassification, 32x32, patch 4)",
            "class": "ViTForImageClassification",
            "config": config,
            "batch": batch,
        }
    raise ValueError(name)


def build_base(spec: dict[str, Any], seed: int = 0) -> nn.Module:
    import transformers

    torch.manual_seed(seed)
    model_class = getattr(transformers, spec["class"])
    config_class = model_class.config_class
    return model_class(config_class(**spec["config"])).train()


def make_batch(name: str, spec: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    batch = spec["batch"]
    num_labels = spec["config"]["num_labels"]
    if name == "bert":
        vocab = spec["config"].get("vocab_size", 30522)
        input_ids = torch.randint(0, vocab, (batch["batch_size"], batch["seq_len"]), generator=generator)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    else:
        size = spec["config"]["image_size"]
        inputs = {"pixel_values": torch.randn(batch["batch_size"], 3, size, size, generator=generator)}
    labels = torch.randint(0, num_labels, (batch["batch_size"],), generator=generator)
    return inputs, labels


def build_trgl(spec: dict[str, Any], num_modules: int) -> trgl_hf.TRGLModel:
    base = build_base(spec)
    model = trgl_hf.TRGLModel.from_base(base, trgl_hf.TRGLConfig(num_modules=num_modules, tau=10.0))
    return model.train()


def make_adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(params), **ADAMW)


def adamw_implementation(optimizer: torch.optim.Optimizer) -> str:
    from torch.optim.optimizer import _default_to_fused_or_foreach

    params = [p for group in optimizer.param_groups for p in group["params"]]
    fused, foreach = _default_to_fused_or_foreach(params, differentiable=False, use_fused=False)
    return "fused" if fused else ("foreach" if foreach else "single-tensor (for-loop)")


# ============================================================================ steps


def e2e_step_fn(model: nn.Module, optimizer, inputs, labels) -> Callable[[StepContext], None]:
    params = list(model.parameters())

    def step(ctx: StepContext) -> None:
        with ctx.phase("fwd_bwd"):
            loss = model(**inputs, labels=labels).loss
            loss.backward()
            del loss
        ctx.capture_grads(params)
        with ctx.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def trgl_step_fn(model: trgl_hf.TRGLModel, optimizer, inputs, labels, cached=None) -> Callable[[StepContext], None]:
    """`for step in model.iter_modules(frozen_heads=False, **inputs, labels=y): step.loss.backward()` + AdamW step.

    Each module's forward (inside the generator) and backward run in a phase named after the module, so the report
    says in which module the peak happens.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(inputs)
    if cached is not None:
        kwargs["trgl_hidden_states"] = cached

    def step(ctx: StepContext) -> None:
        with ctx.phase("fwd_bwd"):
            modules = model.iter_modules(frozen_heads=False, labels=labels, **kwargs)
            index = model.cached_input_module or 0
            while True:
                with ctx.phase(f"module_{index + 1}"):
                    module_step = next(modules, None)
                    if module_step is None:
                        break
                    if module_step.trainable:
                        module_step.loss.backward()
                    del module_step
                index += 1
            del modules
        ctx.capture_grads(params)
        with ctx.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


@torch.no_grad()
def next_cache(model: trgl_hf.TRGLModel, inputs, previous: torch.Tensor | None, index: int) -> torch.Tensor:
    """Output of module `index - 1` (frozen, eval mode, no_grad) for the batch: module `index`'s prefix cache,
    computed from module `index - 1`'s own cache (as sequential training builds it, one module at a time)."""
    saved = model.cached_input_module
    kwargs = dict(inputs)
    if previous is not None:
        model.cached_input_module = index - 1
        kwargs["trgl_hidden_states"] = previous
    else:
        model.cached_input_module = None
    hidden = None
    for module_step in model.iter_modules(last_module=index - 1, frozen_heads=False, **kwargs):
        hidden = module_step.hidden_state
    model.cached_input_module = saved
    return hidden.detach().clone()


# ============================================================================ measurement


def measure(step, model: nn.Module, optimizer, persistent_inputs: list[torch.Tensor], timed: int) -> dict[str, Any]:
    """Warm-up step (creates the AdamW state), traced step, `timed` timed steps."""
    ctx = StepContext(tracing=False)
    begin, begin_cpu = time.perf_counter(), time.process_time()
    step(ctx)
    warmup = (time.perf_counter() - begin, time.process_time() - begin_cpu)
    seen: set[int] = set()
    state = {
        "weights_and_buffers": storage_bytes(model.parameters(), seen) + storage_bytes(model.buffers(), seen),
        "optimizer_state": storage_bytes(optimizer_state(optimizer), seen),
        "inputs": storage_bytes(persistent_inputs, seen),
    }
    trace = traced_step(step)
    walls, cpus = timed_steps(step, timed) if timed > 0 else ([], [])
    persistent = sum(state.values())
    return {
        "peak_bytes": persistent + trace["step_peak_bytes"],
        "breakdown_at_peak_bytes": {
            **state,
            "gradients": trace["grads_at_peak_bytes"],
            "activations_and_temporaries": trace["step_peak_bytes"] - trace["grads_at_peak_bytes"],
        },
        "gradients_total_bytes": trace["grad_bytes_allocated"],
        "peak_phase": trace["peak_phase"],
        "phase_peak_above_state_bytes": trace["phase_peak_bytes"],
        "residual_bytes": trace["residual_bytes"],
        "untracked_frees": trace["untracked_frees"],
        "allocation_events": trace["num_allocation_events"],
        "traced_step_s": trace["traced_step_s"],
        "warmup_wall_s": round(warmup[0], 3),
        "warmup_cpu_s": round(warmup[1], 3),
        "step_wall_times_s": [round(t, 3) for t in walls],
        "step_cpu_times_s": [round(t, 3) for t in cpus],
        "step_wall_s": round(statistics.mean(walls), 3) if walls else None,
        "step_cpu_s": round(statistics.mean(cpus), 3) if cpus else None,
    }


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.records: list[dict[str, Any]] = []
        self.module_records: list[dict[str, Any]] = []
        self.notes: dict[str, Any] = {}

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
        where = record.get("peak_module")
        log(
            f"{model_name} {mode}{'' if k is None else f' K={k}'}: peak {mib(record['peak_bytes'])} MiB "
            f"({record['peak_phase']}{'' if where is None else f', module {where}'}), "
            f"CPU {record['step_cpu_s']} s/step"
            f" (wall {record['step_wall_s']} s)"
        )
        return record

    def e2e(self, name: str, spec: dict[str, Any], checkpointing: bool) -> dict:
        inputs, labels = make_batch(name, spec)
        model = build_base(spec)
        if checkpointing:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # deprecated alias of activation_checkpointing_enable
                model.gradient_checkpointing_enable()
        optimizer = make_adamw(model.parameters())
        self.notes.setdefault("adamw_implementation", adamw_implementation(optimizer))
        self.notes.setdefault("attn_implementation", {})[name] = model.config._attn_implementation
        step = e2e_step_fn(model, optimizer, inputs, labels)
        summary = measure(step, model, optimizer, [*inputs.values(), labels], self.args.timed)
        record = self._add(
            name,
            "checkpointing" if checkpointing else "e2e",
            None,
            None,
            summary,
            storage_bytes(model.parameters()),
            num_layers=spec["config"]["num_hidden_layers"],
        )
        del model, optimizer, step
        gc.collect()
        return record

    def trgl(self, name: str, spec: dict[str, Any], k: int, timed: int) -> None:
        inputs, labels = make_batch(name, spec)
        model = build_trgl(spec, k)
        split = list(model.config.split)
        # ---------------------------------------------------------------- parallel: every module, one step
        model.set_trainable_modules(range(k))
        model.cached_input_module = None
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_adamw(params)
        step = trgl_step_fn(model, optimizer, inputs, labels)
        summary = measure(step, model, optimizer, [*inputs.values(), labels], timed)
        phase = summary["peak_phase"] or ""
        self._add(
            name,
            "parallel",
            k,
            split,
            summary,
            storage_bytes(params),
            peak_module=int(phase.split("_")[1]) if phase.startswith("module_") else None,
        )
        del optimizer, step, params
        for param in model.parameters():
            param.grad = None
        gc.collect()
        # ---------------------------------------------------------------- sequential with the prefix cache
        entries = []
        cached = None
        for index in range(k):
            model.set_trainable_modules([index])
            model.train()
            if index > 0:
                cached = next_cache(model, inputs, cached, index)
                model.cached_input_module = index
            else:
                model.cached_input_module = None
            params = list(model.module_parameters(index))
            optimizer = make_adamw(params)
            step = trgl_step_fn(model, optimizer, inputs, labels, cached=cached)
            persistent = [*inputs.values(), labels] + ([cached] if cached is not None else [])
            summary = measure(step, model, optimizer, persistent, timed)
            entry = {
                "model": name,
                "K": k,
                "module": index + 1,
                "blocks": split[index],
                "trainable_param_bytes": storage_bytes(params),
                "cache_bytes": storage_bytes([cached]) if cached is not None else 0,
                **summary,
            }
            entries.append(entry)
            self.module_records.append(entry)
            log(
                f"  {name} sequential K={k} module {index + 1}/{k}: peak {mib(entry['peak_bytes'])} MiB, "
                f"CPU {entry['step_cpu_s']} s/step"
            )
            del optimizer, step, params
            gc.collect()
        worst = max(entries, key=lambda e: e["peak_bytes"])
        summary = {key: worst[key] for key in worst if key not in ("model", "K", "module", "blocks")}
        cpu = [e["step_cpu_s"] for e in entries]
        wall = [e["step_wall_s"] for e in entries]
        known = all(t is not None for t in cpu)
        summary["step_cpu_s"] = round(statistics.mean(cpu), 3) if known else None
        summary["step_wall_s"] = round(statistics.mean(wall), 3) if known else None
        summary["step_cpu_sum_over_modules_s"] = round(sum(cpu), 3) if known else None
        summary["step_wall_sum_over_modules_s"] = round(sum(wall), 3) if known else None
        summary["per_module_peak_bytes"] = [e["peak_bytes"] for e in entries]
        summary["per_module_step_cpu_s"] = cpu
        self._add(name, "sequential", k, split, summary, summary["trainable_param_bytes"], peak_module=worst["module"])
        model.cached_input_module = None
        del model, cached, entries
        gc.collect()


def add_ratios(records: list[dict[str, Any]]) -> None:
    e2e = {r["model"]: r for r in records if r["mode"] == "e2e"}
    for record in records:
        base = e2e.get(record["model"])
        if base is None:
            continue
        record["ratio_to_e2e"] = round(record["peak_bytes"] / base["peak_bytes"], 3)
        for field, ratio, reference in (
            ("step_cpu_s", "cpu_ratio_to_e2e", base["step_cpu_s"]),
            ("step_wall_s", "wall_ratio_to_e2e", base["step_wall_s"]),
            ("step_cpu_sum_over_modules_s", "cpu_sum_over_modules_ratio_to_e2e", base["step_cpu_s"]),
        ):
            value = record.get(field)
            record[ratio] = round(value / reference, 3) if value and reference else None


# ============================================================================ report

MODE_LABEL = {
    "e2e": "E2E",
    "checkpointing": "E2E + gradient checkpointing",
    "parallel": "TRGL parallel",
    "sequential": "TRGL sequential (prefix cache)",
}


def find(records, **keys):
    return next((r for r in records if all(r.get(k) == v for k, v in keys.items())), None)


def results_table(records: list[dict[str, Any]], name: str) -> str:
    rows = [r for r in records if r["model"] == name]
    rows.sort(key=lambda r: (list(MODE_LABEL).index(r["mode"]), r["K"] or 0))
    lines = [
        "| mode | K | layers per module | peak MiB | x E2E | weights MiB | AdamW state MiB | gradients MiB (at peak) "
        "| activations + temporaries MiB (at peak) | inputs MiB | peak at | CPU s/step | CPU x E2E | "
        "wall s/step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        b = r["breakdown_at_peak_bytes"]
        where = r.get("peak_phase") or ""
        if r["mode"] == "sequential":
            where = f"module {r['peak_module']}'s step ({where.replace('_', ' ')})"
        elif where.startswith("module_"):
            where = f"module {where.split('_')[1]} fwd/bwd"
        else:
            where = where.replace("fwd_bwd", "fwd/bwd")
        cpu = fmt(r.get("step_cpu_s"), 2)
        cpu_ratio = fmt(r.get("cpu_ratio_to_e2e"), 2)
        if r["mode"] == "sequential" and r.get("step_cpu_s") is not None:
            cpu = f"{r['step_cpu_s']:.2f} per module (sum {r['step_cpu_sum_over_modules_s']:.2f})"
            cpu_ratio = f"{r['cpu_ratio_to_e2e']:.2f} (sum {r['cpu_sum_over_modules_ratio_to_e2e']:.2f})"
        lines.append(
            f"| {MODE_LABEL[r['mode']]} | {r['K'] or '–'} | {','.join(map(str, r['split'])) if r['split'] else '–'} "
            f"| {fmt(mib(r['peak_bytes']), 1)} | {fmt(r.get('ratio_to_e2e'), 3)} | "
            f"{fmt(mib(b['weights_and_buffers']), 1)} | {fmt(mib(b['optimizer_state']), 1)} | "
            f"{fmt(mib(b['gradients']), 1)} | {fmt(mib(b['activations_and_temporaries']), 1)} | "
            f"{fmt(mib(b['inputs']), 2)} | {where} | {cpu} | {cpu_ratio} | {fmt(r.get('step_wall_s'), 2)} |"
        )
    return "\n".join(lines)


def module_table(module_records: list[dict[str, Any]], name: str, k: int) -> str:
    rows = [m for m in module_records if m["model"] == name and m["K"] == k]
    if not rows:
        return ""
    lines = [
        "| module | layers | trained params MiB | AdamW state MiB | gradients MiB (at peak) | activations + "
        "temporaries MiB (at peak) | cache MiB | peak MiB | peak at | CPU s/step |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in rows:
        b = m["breakdown_at_peak_bytes"]
        lines.append(
            f"| {m['module']} | {m['blocks']} | {fmt(mib(m['trainable_param_bytes']), 1)} | "
            f"{fmt(mib(b['optimizer_state']), 1)} | {fmt(mib(b['gradients']), 1)} | "
            f"{fmt(mib(b['activations_and_temporaries']), 1)} | {fmt(mib(m['cache_bytes']), 1)} | "
            f"{fmt(mib(m['peak_bytes']), 1)} | {(m['peak_phase'] or '').replace('_', ' ')} | "
            f"{fmt(m['step_cpu_s'], 2)} |"
        )
    return "\n".join(lines)


def _state(record: dict[str, Any]) -> int:
    b = record["breakdown_at_peak_bytes"]
    return b["weights_and_buffers"] + b["optimizer_state"] + b["inputs"]


def optimizer_phase_peak(record: dict[str, Any]) -> int | None:
    """Peak of the AdamW-step phase (state + that phase's largest running sum)."""
    above = (record.get("phase_peak_above_state_bytes") or {}).get("optimizer")
    return None if above is None else _state(record) + above


def _join(values: list[str]) -> str:
    return " / ".join(values)


def _ks(records: list[dict[str, Any]]) -> str:
    return ", ".join(str(r["K"]) for r in records)


def _activations(record: dict[str, Any]) -> int:
    return record["breakdown_at_peak_bytes"]["activations_and_temporaries"]


def what_this_shows(result: dict[str, Any]) -> list[str]:
    """Short statements built from the measured numbers only (one per model, then the timing)."""
    records = result["records"]
    out = []
    timing_ratios: dict[str, list[float]] = {"checkpointing": [], "parallel": [], "sequential": []}
    for name in result["settings"]["models"]:
        e2e = find(records, model=name, mode="e2e")
        ck = find(records, model=name, mode="checkpointing")
        if e2e is None:
            continue
        ks = sorted(result["settings"]["ks"][name])
        par = [find(records, model=name, mode="parallel", K=k) for k in ks]
        seq = [find(records, model=name, mode="sequential", K=k) for k in ks]
        par = [r for r in par if r]
        seq = [r for r in seq if r]
        b = e2e["breakdown_at_peak_bytes"]
        static = b["weights_and_buffers"] + b["optimizer_state"]
        label = "BERT" if name == "bert" else "ViT"
        text = (
            f"**{label}** (K = {', '.join(map(str, ks))}): the E2E peak is {mib(e2e['peak_bytes'])} MiB, of which "
            f"weights + AdamW state {mib(static)} MiB ({100 * static / e2e['peak_bytes']:.0f} %) and activations "
            f"{mib(b['activations_and_temporaries'])} MiB. "
        )
        opt = optimizer_phase_peak(e2e)
        if ck:
            text += f"Gradient checkpointing: {ck['ratio_to_e2e']}x ({mib(ck['peak_bytes'])} MiB"
            if ck["peak_phase"] == "optimizer":
                text += (
                    f", reached in the AdamW step: all gradients {mib(ck['breakdown_at_peak_bytes']['gradients'])} "
                    f"MiB + temporaries {mib(ck['breakdown_at_peak_bytes']['activations_and_temporaries'])} MiB; "
                    f"its forward/backward peaks lower, at "
                    f"{mib(_state(ck) + ck['phase_peak_above_state_bytes']['fwd_bwd'])} MiB"
                )
            text += "). "
        if par:
            text += (
                f"TRGL parallel: {_join([str(r['ratio_to_e2e']) for r in par])}x "
                f"({_join([str(mib(r['peak_bytes'])) for r in par])} MiB), at the last module's forward/backward "
                "with the gradients of the earlier modules alive "
                f"({_join([str(mib(r['breakdown_at_peak_bytes']['gradients'])) for r in par])} "
                "MiB); it keeps every gradient and the whole AdamW state, and its own AdamW step peaks at "
                f"{_join([str(mib(optimizer_phase_peak(r))) for r in par])} MiB (E2E's: {mib(opt)} MiB). "
            )
            if ck:
                above = [r for r in par if r["peak_bytes"] > ck["peak_bytes"]]
                if above:
                    text += f"Parallel uses more memory than checkpointing at K = {_ks(above)}. "
        if seq:
            first = [m for m in result["module_records"] if m["model"] == name and m["K"] == seq[-1]["K"]]
            text += (
                f"TRGL sequential: {_join([str(r['ratio_to_e2e']) for r in seq])}x "
                f"({_join([str(mib(r['peak_bytes'])) for r in seq])} MiB), peak at module "
                + (
                    "1 (which also trains the embeddings)"
                    if all(r["peak_module"] == 1 for r in seq)
                    else _join([str(r["peak_module"]) for r in seq])
                )
            )
            if first:
                trained = [mib(m["trainable_param_bytes"]) for m in first]
                text += (
                    f"; at K = {seq[-1]['K']} the modules train {', '.join(map(str, trained))} MiB of parameters "
                    f"and each module's activations are {', '.join(str(mib(_activations(m))) for m in first)} MiB"
                    f" (E2E's / K = {mib(b['activations_and_temporaries'] / seq[-1]['K'])} MiB), while the weights of "
                    f"all modules ({mib(seq[-1]['breakdown_at_peak_bytes']['weights_and_buffers'])} MiB) stay in "
                    "memory"
                )
            text += ". "
            if ck:
                above = [r for r in seq if r["peak_bytes"] > ck["peak_bytes"]]
                if above:
                    text += f"Sequential uses more memory than checkpointing at K = {_ks(above)}."
        out.append(text.strip())
        for mode, rows in (("checkpointing", [ck] if ck else []), ("parallel", par)):
            timing_ratios[mode] += [r["cpu_ratio_to_e2e"] for r in rows if r.get("cpu_ratio_to_e2e") is not None]
        timing_ratios["sequential"] += [
            r["cpu_sum_over_modules_ratio_to_e2e"] for r in seq if r.get("cpu_sum_over_modules_ratio_to_e2e")
        ]
    spreads = []
    for r in records:
        times = r.get("step_cpu_times_s") or []
        if len(times) >= 2:
            spreads.append((100 * (max(times) - min(times)) / min(times), r, times))
    text = "**Time (CPU)**: " + "; ".join(
        f"{mode} {min(v):.2f}-{max(v):.2f}x E2E" if len(v) > 1 else f"{mode} {v[0]:.2f}x E2E"
        for mode, v in (
            ("gradient checkpointing", timing_ratios["checkpointing"]),
            ("TRGL parallel", timing_ratios["parallel"]),
            ("TRGL sequential (all K module steps of one batch)", timing_ratios["sequential"]),
        )
        if v
    )
    if spreads:
        worst = max(spreads, key=lambda item: item[0])
        text += (
            f". Two steps of the same configuration differ by up to {worst[0]:.0f} % ({worst[1]['model']} "
            f"{worst[1]['mode']}: {worst[2][0]} vs {worst[2][1]} s) on the shared cores, so TRGL vs E2E differences "
            "of that size are not resolved by this run (checkpointing's extra cost is larger than that scatter)."
        )
    out.append(text)
    return out


def write_outputs(result: dict[str, Any], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory_transformers.json").write_text(json.dumps(result, indent=1))
    env = result["environment"]
    settings = result["settings"]
    lines = [
        "# Peak training memory and time per step for transformers: E2E vs checkpointing vs TRGL",
        "",
        f"Command: `{result['command']}` — run time {result['runtime_s'] / 60:.1f} min ({env['date_utc']}, torch "
        f"{env['torch']}, transformers {env['transformers']}, {env['cpu']}, {env['torch_threads']} thread, git "
        f"{(env.get('git_commit_at_start') or env['git_commit'] or '')[:10]}).",
        "",
    ]
    for name in settings["models"]:
        spec = settings["model_specs"][name]
        batch = spec["batch"]
        shape = (
            f"{batch['batch_size']} x {batch['seq_len']} tokens"
            if "seq_len" in batch
            else (f"{batch['batch_size']} x 3 x {spec['config']['image_size']} x {spec['config']['image_size']}")
        )
        lines.append(
            f"- {spec['label']}: `{spec['class']}({json.dumps(spec['config'])})`, batch {shape}, random "
            f"init and random inputs (memory does not depend on the values); attention implementation "
            f"`{result['notes'].get('attn_implementation', {}).get(name)}`."
        )
    lines += [
        "",
        "## Method",
        "",
        "Same allocator-level measurement as `benchmarks/memory_speed.py` (its functions are imported): one training "
        "step (forward, backward, AdamW step, `zero_grad(set_to_none=True)`) runs under `torch.profiler` with "
        "`profile_memory=True`; peak = bytes of the state at the start of the step (weights and buffers, AdamW "
        "`exp_avg`/`exp_avg_sq`/`step`, the batch and, for sequential, the prefix cache; distinct storages) + the "
        "maximum of the running sum of the step's allocations minus their frees. Gradients = blocks alive at the "
        "addresses of the `.grad` tensors before the optimizer step; activations + temporaries = the rest of the "
        "step's live bytes at the peak. The allocator trace was validated on known-answer cases in this run: "
        + ", ".join(f"{k} {'OK' if v['ok'] else 'FAILED'}" for k, v in result["validation"].items())
        + f"; largest residual of a traced step (bytes it allocated and did not free) {result['max_residual_bytes']}"
        " B. Memory allocated outside PyTorch's allocator (oneDNN scratchpads, Python objects) is not counted.",
        "",
        f"Each configuration: 1 untraced warm-up step (creates the AdamW state, so the traced step is a steady-state "
        f"step and the optimizer state is counted), 1 traced step (memory), then {settings['timed_steps']} timed "
        "steps (mean). Optimizer: `torch.optim.AdamW(lr=1e-4, weight_decay=0.01)`, "
        f"{result['notes'].get('adamw_implementation')} implementation (the CPU default); sequential: a fresh "
        "AdamW over module k's parameters only.",
        "",
        "- **E2E**: `loss = model(**inputs, labels=y).loss; loss.backward()`, AdamW step over all parameters.",
        "- **E2E + gradient checkpointing**: the same after transformers' own `model.gradient_checkpointing_enable()` "
        "(in transformers 5.24 a deprecated alias of `activation_checkpointing_enable`; defaults: every encoder "
        "layer checkpointed, `torch.utils.checkpoint` with `use_reentrant=False`).",
        "- **TRGL parallel**: `TRGLModel.from_base(base, TRGLConfig(num_modules=K, tau=10.0))` (equal split of the "
        "layers, each module's head = a copy of the model's own head), all modules trainable; one step = `for step "
        "in model.iter_modules(frozen_heads=False, **inputs, labels=y): step.loss.backward()`, then one AdamW step "
        "over all parameters.",
        "- **TRGL sequential (prefix cache)**: module k trained alone (`set_trainable_modules([k])`, "
        "`cached_input_module = k`); its input is `trgl_hidden_states` = module k-1's output for the batch "
        "(computed once under `no_grad` from module k-1's own cache, after module k-1's steps) plus the original "
        "`input_ids`/`attention_mask` (BERT: the adapter rebuilds the masks from them) or `pixel_values` (ViT). "
        "Reported: the max over k of the peak (the module is named), the mean CPU time of a module step, and the "
        "sum over the K module steps (one batch through every module, comparable to one E2E step).",
        "",
        f"Time: CPU time of the process (`time.process_time`, 1 intra-op thread), the primary number; the machine's "
        f"{env['cpu_count']} cores were shared with other jobs (load average {load_text(result)}), so wall times are "
        "inflated and scattered and are given only for reference.",
        "",
    ]
    for name in settings["models"]:
        spec = settings["model_specs"][name]
        lines += [f"## {spec['label']}", "", results_table(result["records"], name), ""]
        e2e = find(result["records"], model=name, mode="e2e")
        if e2e:
            lines += [
                f"Trainable parameters {mib(e2e['trainable_param_bytes'])} MiB (weights + buffers "
                f"{mib(e2e['breakdown_at_peak_bytes']['weights_and_buffers'])} MiB). *peak at*: the phase of the "
                "traced step holding the peak (for TRGL: the module whose forward/backward is running).",
                "",
            ]
        for k in settings["ks"][name]:
            if k == 4:
                table = module_table(result["module_records"], name, k)
                if table:
                    lines += [f"### Per module: sequential, K = {k}", "", table, ""]
    lines += ["## What this shows", ""]
    lines += [f"- {sentence}" for sentence in what_this_shows(result)]
    for note in result.get("extra_notes") or []:
        lines.append(f"- {note}")
    if result.get("skipped"):
        lines += ["", "Skipped for time: " + "; ".join(result["skipped"]) + "."]
    lines.append("")
    text = "\n".join(lines)
    (out_dir / "memory_transformers.md").write_text(text)
    return text


def load_text(result: dict[str, Any]) -> str:
    env = result["environment"]
    start = env.get("load_average_at_start") or [None]
    end = env.get("load_average_at_end") or [None]
    return f"{start[0]:.1f} at the start, {end[0]:.1f} at the end" if start[0] is not None else "unknown"


# ============================================================================ main


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
    parser.add_argument("--timed", type=int, default=2, help="timed steps after warm-up and trace")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render-only", type=Path, default=None, metavar="JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.bert_ks = args.bert_ks or [2]
        args.vit_ks = args.vit_ks or [2]
        args.bert_extra_k = args.vit_extra_k = 4
        args.timed = 1
    args.bert_ks = args.bert_ks or [2, 4]
    args.vit_ks = args.vit_ks or [2, 4]
    if args.out_dir is None:
        args.out_dir = (
            Path(tempfile.mkdtemp(prefix="trgl_memory_transformers_"))
            if args.quick
            else REPO_ROOT / "benchmarks" / "results"
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render_only is not None:
        result = json.loads(args.render_only.read_text())
        print(write_outputs(result, args.render_only.parent))
        return result
    torch.set_num_threads(args.threads)
    gc.collect()
    gc.freeze()
    torch.set_flush_denormal(True)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    command = (
        "python benchmarks/memory_transformers.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    log(f"{command}: models {args.models}, out {args.out_dir}")
    commit_at_start = environment()["git_commit"]
    validation = validate_measurement()
    log(f"validation: {json.dumps({k: v['ok'] for k, v in validation.items()})}")

    bench = Bench(args)
    specs = {name: model_spec(name, args.quick) for name in args.models}
    ks = {"bert": list(args.bert_ks), "vit": list(args.vit_ks)}
    extra = {"bert": args.bert_extra_k, "vit": args.vit_extra_k}
    step_cost: dict[str, tuple[float, float]] = {}
    for name in args.models:
        begin, begin_cpu = time.perf_counter(), time.process_time()
        e2e = bench.e2e(name, specs[name], checkpointing=False)
        step_cost[name] = (time.perf_counter() - begin, time.process_time() - begin_cpu)  # one E2E config
        bench.e2e(name, specs[name], checkpointing=True)
        for k in ks[name]:
            bench.trgl(name, specs[name], k, args.timed)
        del e2e
    skipped = []
    # Extra K (cheaper model first), if the estimate fits in the budget: a TRGL K (parallel + sequential) costs about
    # two E2E configurations (each module step is ~1/K of a full step).
    for name in sorted(args.models, key=lambda n: step_cost[n][0]):
        k = extra[name]
        if not k or k in ks[name]:
            continue
        estimate = 2.2 * step_cost[name][0]
        elapsed = time.perf_counter() - START
        if elapsed + estimate <= 60 * args.budget_min:
            log(f"extra K={k} for {name}: estimated {estimate:.0f} s, elapsed {elapsed:.0f} s")
            bench.trgl(name, specs[name], k, args.timed)
            ks[name].append(k)
        else:
            skipped.append(
                f"{name} K = {k} (estimated {estimate / 60:.1f} min after {elapsed / 60:.1f} min, budget "
                f"{args.budget_min} min)"
            )
            log("skipped " + skipped[-1])

    add_ratios(bench.records)
    residuals = [r["residual_bytes"] for r in bench.records] + [m["residual_bytes"] for m in bench.module_records]
    result = {
        "command": command,
        "runtime_s": round(time.perf_counter() - START, 1),
        "environment": {
            **environment(),
            "load_average_at_start": LOAD_AT_START,
            "git_commit_at_start": commit_at_start,
        },
        "settings": {
            "models": args.models,
            "model_specs": specs,
            "ks": ks,
            "tau": 10.0,
            "split_policy": "equal",
            "optimizer": f"AdamW({ADAMW}), state created by an untraced warm-up step before the traced step",
            "timed_steps": args.timed,
            "threads": args.threads,
            "quick": args.quick,
            "bytes_unit": "MiB = 2**20 bytes in the Markdown; bytes in the JSON",
        },
        "max_residual_bytes": max(residuals) if residuals else None,
        "validation": validation,
        "notes": bench.notes,
        "skipped": skipped,
        "records": bench.records,
        "module_records": bench.module_records,
    }
    text = write_outputs(result, args.out_dir)
    log(f"wrote {args.out_dir}")
    print(text)
    return result


if __name__ == "__main__":
    main()
