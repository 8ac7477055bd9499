"""GPU peak training memory and throughput of CIFAR ResNet-110: end-to-end vs gradient checkpointing vs TRGL
(parallel and sequential), the same configurations as `memory_speed`, measured on a CUDA device.

    python -m benchmarks.gpu_resnet110                          # ResNet-110, batch 256 and 128, K = 2, 4, 8, 16
    python -m benchmarks.gpu_resnet110 --quick --device cpu     # smoke run of the code paths (no memory figures)
    python -m benchmarks.gpu_resnet110 --scale-out               # also the scale-out rows (every visible GPU)

`--scale-out` then runs `benchmarks.ddp_overlap --device cuda` (and `--quick` with a quick run): end-to-end DDP
against TRGL parallel with the flat and the overlapped gradient averaging on every visible GPU (one NCCL process
each), step time and peak memory per rank, written as `ddp_overlap.json` / `.md` next to this benchmark's files.

Memory: `torch.cuda.max_memory_allocated` over one training step (driven through `TRGLModel.phase` / `iter_modules`,
`benchmarks/common/steps.py`), after a warm-up step (so that the optimizer state exists) and
`torch.cuda.reset_peak_memory_stats`. Time: `TRGLTrainer.train()` / `transformers.Trainer.train()` on the same model
and batch, synchronised step times from a Trainer callback, median of `--steps` steps after a warm-up step.
Sequential TRGL: the largest module's peak; its time is the sum of one step of every module (one epoch of each module,
from the cached prefix output), compared with one end-to-end step.

Outputs `gpu_resnet110.json` and `gpu_resnet110.md` in `--out-dir` (default `benchmarks/results`; a temporary folder
with `--quick`). On a CPU device the memory columns are empty: use `memory_speed` there.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import env, memory, models, report, steps, timing
from benchmarks.common.env import MIB, fmt, log

NAME = "gpu_resnet110"


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args, self.device = args, torch.device(args.device)
        self.scratch, self.runs = Path(tempfile.mkdtemp(prefix="trgl_gpu_trainer_")), 0

    def release(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def peak(self, step) -> int | None:
        """`max_memory_allocated` of one step after a warm-up step (None off CUDA)."""
        if self.device.type != "cuda":
            return None
        context = memory.StepContext(tracing=False)
        step(context)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        step(context)
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)

    def time(self, model, x, y, trgl_mode=None, split=None) -> list[float]:
        """Median synchronised step time of every phase of `Trainer.train()`."""
        self.runs += 1
        args = timing.training_args(
            self.scratch / f"run-{self.runs}",
            self.args.steps + 1,
            len(y),
            device=self.device.type,
            trgl_mode=trgl_mode,
        )
        trainer = timing.make_trainer(model, args, timing.FixedBatch({"pixel_values": x}, y), split=split)
        phases = timing.timed_train(trainer, warmup=1, device=self.device.type)["phases"]
        return [timing.summary(phase["wall_s"]) for phase in phases]

    def config(self, name: str, k: int, policy: str, head: str, batch_size: int) -> dict[str, Any]:
        depth = self.args.depth
        x, y = (t.to(self.device) for t in models.random_images(batch_size))
        split, peak, modules = None, None, None
        if name in ("e2e", "checkpointing"):
            model = models.build_resnet(depth).to(self.device)
            optimizer = models.make_sgd(model.parameters())
            if name == "checkpointing":
                split = models.module_split(depth, k, policy)
                peak = self.peak(steps.checkpointed_step_fn(model, optimizer, x, y, split))
            else:
                peak = self.peak(steps.e2e_step_fn(model, optimizer, {"pixel_values": x}, y))
            del optimizer
            step_s = self.time(model, x, y, split=split)[0]
        else:
            model = models.build_trgl_resnet(depth, k, policy, aux_head=head).to(self.device)
            split = list(model.config.split)
            if name == "parallel":
                peak = self.peak(
                    steps.trgl_step_fn(model, models.make_sgd(model.parameters()), {"pixel_values": x}, y)
                )
                step_s = self.time(model, x, y, trgl_mode="parallel")[0]
            else:
                peaks = []
                for index in range(k):
                    cached = steps.prefix_output(model, {"pixel_values": x}, index) if index else None
                    with model.phase([index], cached_from=index if index else None):
                        optimizer = models.make_sgd(model.module_parameters(index))
                        step = steps.trgl_step_fn(model, optimizer, {"pixel_values": x}, y, cached=cached)
                        peaks.append(self.peak(step))
                        del optimizer, step, cached
                    self.release()
                peak = max(peaks) if None not in peaks else None
                modules = self.time(model, x, y, trgl_mode="sequential")
                step_s = sum(modules)
        del model
        self.release()
        record = {
            "mode": name,
            "K": k,
            "split_policy": policy,
            "batch_size": batch_size,
            "split": split,
            "aux_head": head if name in ("parallel", "sequential") else None,
            "peak_bytes": peak,
            "step_s": step_s,
            "module_step_s": modules,
            "images_per_s": batch_size / step_s if name != "sequential" else None,
        }
        shown = f"{peak / MIB:.1f} MiB" if peak is not None else "n/a"
        log(f"{name} K={k} {policy} {record['aux_head'] or ''} batch {batch_size}: {shown}, {step_s:.4f} s")
        return record


def plan(args: argparse.Namespace) -> list[tuple[str, int, str, str]]:
    configs = [("e2e", 1, "equal", "conv")]
    for k in args.ks:
        for policy in args.policies:
            configs.append(("checkpointing", k, policy, "conv"))
            configs += [("parallel", k, policy, head) for head in args.aux_heads]
            configs.append(("sequential", k, policy, args.aux_heads[0]))
    return configs


def markdown(result: dict[str, Any]) -> str:
    lines = [
        report.text(
            NAME,
            "header",
            command=result["command"],
            device=result["device_name"],
            torch=result["environment"]["torch"],
            date=result["environment"]["date_utc"],
            runtime_min=result["environment"]["runtime_s"] / 60,
            steps=result["steps"],
        ),
        "",
    ]
    for batch_size in result["batch_sizes"]:
        rows = []
        for r in (r for r in result["records"] if r["batch_size"] == batch_size):
            peak = r["peak_bytes"] / MIB if r["peak_bytes"] is not None else None
            rows.append(
                [
                    r["mode"],
                    r["K"],
                    r["split_policy"],
                    r["aux_head"] or "",
                    fmt(peak, 1),
                    fmt(r["memory_x_e2e"], 3),
                    fmt(r["step_s"], 4),
                    fmt(r["time_x_e2e"], 3),
                    fmt(r["images_per_s"], 0),
                ]
            )
        header = ["mode", "K", "split", "head", "peak MiB", "memory x E2E", "s/step", "time x E2E", "images/s"]
        lines += [f"## Batch {batch_size}", "", report.table(header, rows), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--depth", type=int, default=None, help="default 110 (quick: 8)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 256 128 (quick: 8)")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="default 2 4 8 16 (quick: 2)")
    parser.add_argument("--policies", nargs="+", default=None, help="default equal balanced (quick: balanced)")
    parser.add_argument("--aux-heads", nargs="+", default=["conv", "linear"], help="parallel mode: one row each")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 10; quick 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: ResNet-8, batch 8, K = 2, one split policy")
    parser.add_argument("--scale-out", action="store_true", help="also DDP rows on every GPU (benchmarks.ddp_overlap)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    args.depth = args.depth or (8 if args.quick else 110)
    args.batch_sizes = args.batch_sizes or ([8] if args.quick else [256, 128])
    args.ks = args.ks or ([2] if args.quick else [2, 4, 8, 16])
    args.policies = args.policies or (["balanced"] if args.quick else ["equal", "balanced"])
    args.steps = args.steps or (1 if args.quick else 10)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device here: run on a GPU machine, or pass `--device cpu` for a smoke run.")
    env.setup(args.threads)
    out_dir = env.out_dir(args.out_dir, args.quick, NAME)
    runner = Runner(args)
    records = [
        runner.config(name, k, policy, head, batch_size)
        for batch_size in args.batch_sizes
        for name, k, policy, head in plan(args)
    ]
    for record in records:
        e2e = next(r for r in records if r["mode"] == "e2e" and r["batch_size"] == record["batch_size"])
        both = record["peak_bytes"] is not None and e2e["peak_bytes"]
        record["memory_x_e2e"] = record["peak_bytes"] / e2e["peak_bytes"] if both else None
        record["time_x_e2e"] = record["step_s"] / e2e["step_s"]
    command = env.command_line(NAME, argv)
    result = {
        "command": command,
        "environment": env.environment(command),
        "batch_sizes": args.batch_sizes,
        "device_name": torch.cuda.get_device_name(runner.device) if runner.device.type == "cuda" else "cpu",
        "depth": args.depth,
        "steps": args.steps,
        "records": records,
    }
    report.write_json(out_dir / f"{NAME}.json", result, indent=2)
    report.write_atomically(out_dir / f"{NAME}.md", markdown(result))
    print(markdown(result))
    if args.scale_out:
        from benchmarks import ddp_overlap

        device = "cuda" if runner.device.type == "cuda" else "cpu"
        ddp_overlap.main(["--device", device, "--out-dir", str(out_dir), *(["--quick"] if args.quick else [])])
    return result


if __name__ == "__main__":
    main()
