"""GPU peak training memory and throughput of CIFAR ResNet-110: end-to-end vs gradient checkpointing vs TRGL
(parallel and sequential), the same configurations as `memory_speed.py`, measured on a CUDA device.

    python benchmarks/gpu_resnet110.py                          # ResNet-110, batch 256 and 128, K = 2, 4, 8, 16
    python benchmarks/gpu_resnet110.py --quick --device cpu     # smoke run of the code paths (no memory figures)

Memory: `torch.cuda.max_memory_allocated` over one training step, after a warm-up step (so that the optimizer state
exists) and `torch.cuda.reset_peak_memory_stats`: weights, optimizer state, the batch and the step's activations and
gradients, as the caching allocator hands them out. Throughput: images per second over `--steps` timed steps
(synchronised), after the warm-up. Sequential TRGL trains one module at a time from the cached output of the frozen
prefix: its peak is the largest module's, and its time per epoch is the sum of one step of every module (one epoch of
each module), compared with one end-to-end epoch on the same images.

Outputs `gpu_resnet110.json` and `gpu_resnet110.md` in `--out-dir` (default `benchmarks/results`; a temporary folder
with `--quick`). On a CPU device the memory columns are empty: use `memory_speed.py` there, which measures at the
allocator level.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_speed import (  # noqa: E402
    MIB,
    REPO_ROOT,
    StepContext,
    build_base,
    build_trgl,
    checkpointed_step_fn,
    e2e_step_fn,
    fmt,
    make_optimizer,
    module_split,
    prefix_output,
    random_batch,
    trgl_step_fn,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable[[StepContext], None], device: torch.device, steps: int) -> dict[str, Any]:
    """Peak memory of one step (after one warm-up step) and the median time of `steps` further steps."""
    context = StepContext(tracing=False)
    step(context)
    synchronize(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step(context)
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    times = []
    for _ in range(steps):
        begin = time.perf_counter()
        step(context)
        synchronize(device)
        times.append(time.perf_counter() - begin)
    return {"peak_bytes": peak, "step_s": statistics.median(times), "step_times_s": [round(t, 5) for t in times]}


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_sequential(
    depth: int, k: int, policy: str, aux_head: str, batch: tuple[torch.Tensor, torch.Tensor], device, steps: int
) -> dict[str, Any]:
    x, y = batch
    model = build_trgl(depth, k, policy, seed=0, aux_head=aux_head).to(device)
    modules = []
    for index in range(k):
        model.set_trainable_modules([index])
        model.train()
        optimizer = make_optimizer(model.module_parameters(index))
        cached = prefix_output(model, x, index) if index else None
        model.cached_input_module = index if index else None
        modules.append(measure(trgl_step_fn(model, optimizer, x, y, cached=cached), device, steps))
        model.cached_input_module = None
        del optimizer, cached
        release(device)
    peaks = [m["peak_bytes"] for m in modules]
    return {
        "peak_bytes": max(peaks) if None not in peaks else None,
        "step_s": sum(m["step_s"] for m in modules),
        "split": list(model.config.split),
        "modules": modules,
    }


def run_config(
    name: str, depth: int, k: int, policy: str, aux_head: str, batch_size: int, device, steps: int
) -> dict[str, Any]:
    batch = tuple(tensor.to(device) for tensor in random_batch(batch_size))
    x, y = batch
    split = None
    if name == "sequential":
        result = run_sequential(depth, k, policy, aux_head, batch, device, steps)
    else:
        if name == "e2e":
            model = build_base(depth, seed=0).to(device)
            step = e2e_step_fn(model, make_optimizer(model.parameters()), x, y)
        elif name == "checkpointing":
            split = module_split(depth, k, policy, seed=0)
            model = build_base(depth, seed=0).to(device)
            step = checkpointed_step_fn(model, make_optimizer(model.parameters()), x, y, split)
        else:
            model = build_trgl(depth, k, policy, seed=0, aux_head=aux_head).to(device)
            split = list(model.config.split)
            step = trgl_step_fn(model, make_optimizer(model.parameters()), x, y)
        result = measure(step, device, steps)
        result["split"] = split
        del model, step
    release(device)
    record = {
        "mode": name,
        "K": k,
        "split_policy": policy,
        "aux_head": aux_head if name in ("parallel", "sequential") else None,
        "batch_size": batch_size,
        **result,
    }
    record["images_per_s"] = batch_size / record["step_s"] if name != "sequential" else None
    peak = f"{record['peak_bytes'] / MIB:.1f} MiB" if record["peak_bytes"] is not None else "n/a"
    print(f"{name} K={k} {policy} {record['aux_head'] or ''} batch {batch_size}: {peak}, {record['step_s']:.4f} s")
    return record


def plan(args: argparse.Namespace) -> list[tuple[str, int, str, str]]:
    configs = [("e2e", 1, "equal", "conv")]
    for k in args.ks:
        for policy in args.policies:
            configs.append(("checkpointing", k, policy, "conv"))
            for head in args.aux_heads:
                configs.append(("parallel", k, policy, head))
            configs.append(("sequential", k, policy, args.aux_heads[0]))
    return configs


def add_ratios(records: list[dict[str, Any]]) -> None:
    for record in records:
        e2e = next(r for r in records if r["mode"] == "e2e" and r["batch_size"] == record["batch_size"])
        both = record["peak_bytes"] is not None and e2e["peak_bytes"]
        record["memory_x_e2e"] = record["peak_bytes"] / e2e["peak_bytes"] if both else None
        record["time_x_e2e"] = record["step_s"] / e2e["step_s"]


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# gpu_resnet110",
        "",
        f"Command: `{result['command']}` — {result['device_name']}, torch {result['torch']}, "
        f"{result['date_utc']}, run time {result['runtime_s'] / 60:.1f} min.",
        "",
        "Peak = `torch.cuda.max_memory_allocated` over one training step after a warm-up step; time = median of "
        f"{result['steps']} synchronised steps; sequential: largest module's peak, time = one step of every module "
        "(from the cached prefix output) against one end-to-end step.",
        "",
    ]
    for batch_size in result["batch_sizes"]:
        lines += [
            f"## Batch {batch_size}",
            "",
            "| mode | K | split | head | peak MiB | memory x E2E | s/step | time x E2E | images/s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in (r for r in result["records"] if r["batch_size"] == batch_size):
            peak = r["peak_bytes"] / MIB if r["peak_bytes"] is not None else None
            lines.append(
                f"| {r['mode']} | {r['K']} | {r['split_policy']} | {r['aux_head'] or ''} | {fmt(peak, 1)} | "
                f"{fmt(r['memory_x_e2e'], 3)} | {fmt(r['step_s'], 4)} | {fmt(r['time_x_e2e'], 3)} | "
                f"{fmt(r['images_per_s'], 0)} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--depth", type=int, default=None, help="default 110 (quick: 20)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 256 128 (quick: 16)")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="default 2 4 8 16 (quick: 2 4)")
    parser.add_argument("--policies", nargs="+", default=["equal", "balanced"])
    parser.add_argument("--aux-heads", nargs="+", default=["conv", "linear"], help="parallel mode: one row each")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 10; quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: ResNet-20, batch 16, K in {2, 4}")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    args.depth = args.depth or (20 if args.quick else 110)
    args.batch_sizes = args.batch_sizes or ([16] if args.quick else [256, 128])
    args.ks = args.ks or ([2, 4] if args.quick else [2, 4, 8, 16])
    args.steps = args.steps or (1 if args.quick else 10)
    if args.out_dir is None:
        args.out_dir = (
            Path(tempfile.mkdtemp(prefix="trgl_gpu_")) if args.quick else REPO_ROOT / "benchmarks" / "results"
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run on a GPU machine, or pass `--device cpu` for a smoke run.")
    started = time.perf_counter()
    records = [
        run_config(name, args.depth, k, policy, head, batch_size, device, args.steps)
        for batch_size in args.batch_sizes
        for name, k, policy, head in plan(args)
    ]
    add_ratios(records)
    result = {
        "command": "python benchmarks/gpu_resnet110.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "torch": torch.__version__,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "runtime_s": round(time.perf_counter() - started, 1),
        "depth": args.depth,
        "batch_sizes": args.batch_sizes,
        "steps": args.steps,
        "records": records,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=2) + "\n"), (".md", markdown(result))):
        path = args.out_dir / f"gpu_resnet110{suffix}"
        scratch = path.with_name(path.name + ".tmp")
        scratch.write_text(text)
        os.replace(scratch, path)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
