"""Gradient averaging across 2 CPU processes: TRGL parallel with the overlapped, bucketed averaging against the
previous flat all-reduce and against end-to-end DDP (`transformers.Trainer`), same model and global batch.

    python -m benchmarks.ddp_overlap                     # ~10 min on 2 idle cores
    python -m benchmarks.ddp_overlap --quick             # smoke run (seconds)
    python -m benchmarks.ddp_overlap --device cuda       # every visible GPU, NCCL (run by gpu_resnet110 --scale-out)

The command launches `torch.distributed.run --nproc_per_node N` workers (N = 2 gloo processes on CPU, one per
visible GPU with NCCL on CUDA; with a single GPU, N = 1) and one single-process worker. Every
worker builds the CIFAR ResNet-56 (850k parameters) and trains on one fixed batch of random 32x32 images (the timing
does not depend on the values), global batch 128 (64 per process), SGD, no clipping, no logging:

- `e2e DDP`: `Trainer` on the whole network (accelerate's DDP, bucket cap `ddp_bucket_cap_mb`);
- `TRGL flat`: `TRGLTrainer`, parallel mode, K = 4 linear heads, with the averaging this library used before: after
  the last module's backward, every gradient copied into one flat buffer, one blocking all-reduce, copied back
  (re-implemented here as `flat_synchronise`);
- `TRGL overlapped`: the same with `trgl_hf.distributed.grad_sync.GradientAverager` (each module's buckets are
  reduced while the next module computes);
- `TRGL FSDP2`: the same sharded per module with FSDP2 (`fsdp=True, fsdp_config={"fsdp_version": 2}`; skipped in a
  single process, where FSDP is refused).

Step time: the median over the measured steps (after warm-up) of each run, the arms interleaved, medians over
repetitions. Memory: one step of each arm traced with `torch.profiler(profile_memory=True)` on CPU (the
allocator's allocations and frees, as in the memory benchmark): the step's peak above what was alive before it; on
CUDA `torch.cuda.max_memory_allocated` over the step (the process's peak). In each process, against the same TRGL
step in one process with the same per-process batch (64).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import env, report
from benchmarks.common.env import log

ARMS = ("e2e DDP", "TRGL flat", "TRGL overlapped", "TRGL FSDP2")
DEVICE = {"type": "cpu"}
BUCKET_MB = 1.0
"""The benchmark's bucket cap (`ddp_bucket_cap_mb`, both DDP and TRGL): below the 3.4 MB of gradients, so the
gradients span several buckets."""


def flat_averaging():
    """The averaging `TRGLTrainer` did before the overlapped averager: after backward, one flat copy of every
    gradient and loss, one blocking all-reduce (a distributed strategy of `trgl_hf.distributed.strategy`)."""
    import torch.distributed as dist

    from trgl_hf.distributed.strategy import AveragedGradients

    class FlatAveraging(AveragedGradients):
        def start_step(self, net) -> None:
            pass

        def finish_step(self, net, task_losses, step) -> None:
            params = [p for p in net.parameters() if p.requires_grad]
            for param in params:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
            losses = [v.reshape(1).float() for v in task_losses.values()]
            flat = torch.cat([p.grad.reshape(-1) for p in params] + losses)
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            offset = 0
            for param in params:
                param.grad.copy_(flat[offset : offset + param.numel()].view_as(param.grad))
                offset += param.numel()
            net.transport_schedule.after_step(step, {k: flat[offset + i] for i, k in enumerate(task_losses)})

    return FlatAveraging()


class TraceOneStep:
    """Trainer callback tracing the allocator during step `step` (forward, backward, averaging, optimizer)."""

    def __init__(self, step: int):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == outer.step:
                    outer.begin()

            def on_step_end(self, args, state, control, **kwargs):
                if outer.profiler is not None:
                    outer.end()

        self.step, self.profiler, self.result = step, None, None
        self.callback = Callback()

    def begin(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        if torch.cuda.is_available() and torch.distributed.is_initialized() and DEVICE["type"] == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.profiler = "cuda"
            return
        self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.profiler.__enter__()

    def end(self) -> None:
        from benchmarks.common.memory import StepContext, analyse_trace

        if self.profiler == "cuda":
            torch.cuda.synchronize()
            self.result = torch.cuda.max_memory_allocated()
        else:
            self.profiler.__exit__(None, None, None)
            self.result = analyse_trace(self.profiler, StepContext(tracing=False))["step_peak_bytes"]
        self.profiler = None


def run_arm(arm: str, opts, work: Path) -> dict[str, Any]:
    from benchmarks.common.models import build_resnet, build_trgl_resnet, random_images
    from benchmarks.common.timing import FixedBatch, make_trainer, summary, timed_train, training_args

    x, y = random_images(opts.batch_per_process)
    data = FixedBatch({"pixel_values": x}, y)
    args = training_args(work / arm.replace(" ", "_"), opts.steps, opts.batch_per_process, device=opts.device,
                         trgl_mode=None if arm.startswith("e2e") else "parallel")  # fmt: skip
    args.ddp_bucket_cap_mb = BUCKET_MB
    if arm == "TRGL FSDP2":
        args = training_args(work / "fsdp", opts.steps, opts.batch_per_process, device=opts.device,
                             trgl_mode="parallel", prefix_cache="never", fsdp=True,
                             fsdp_config={"fsdp_version": 2})  # fmt: skip
    model = build_resnet(opts.depth) if arm.startswith("e2e") else build_trgl_resnet(
        opts.depth, opts.num_modules, "equal", aux_head="linear")  # fmt: skip
    trainer = make_trainer(model, args, data)
    tracer = TraceOneStep(opts.warmup)
    trainer.add_callback(tracer.callback)
    if arm == "TRGL flat":
        trainer.strategy = flat_averaging()
    timed = timed_train(trainer, warmup=opts.warmup + 1, device=str(args.device))  # the traced step is untimed
    walls = [t for phase in timed["phases"] for t in phase["wall_s"]]
    return {"arm": arm, "step_s": summary(walls), "steps_s": walls,
            "peak_bytes": tracer.result}  # fmt: skip


def worker(opts) -> None:
    """One process of the distributed (or single-process) run: every arm, interleaved, `reps` times."""
    env.setup(opts.threads)
    DEVICE["type"] = opts.device
    rank = int(os.environ.get("RANK", 0))
    arms = [a for a in opts.arms if a != "TRGL FSDP2" or int(os.environ.get("WORLD_SIZE", 1)) > 1]
    records = []
    with tempfile.TemporaryDirectory(prefix="ddp_overlap_") as tmp:
        for rep in range(opts.reps):
            order = arms[rep % len(arms) :] + arms[: rep % len(arms)]
            for arm in order:
                started = time.perf_counter()
                record = run_arm(arm, opts, Path(tmp))
                record.update(rep=rep, wall_s=round(time.perf_counter() - started, 2))
                records.append(record)
                if rank == 0:
                    log(f"world {os.environ.get('WORLD_SIZE', 1)} rep {rep} {arm}: step {record['step_s']} s, "
                        f"peak {env.mib(record['peak_bytes'])} MiB")  # fmt: skip
    Path(opts.worker_out).mkdir(parents=True, exist_ok=True)
    (Path(opts.worker_out) / f"{opts.tag}-rank{rank}.json").write_text(json.dumps(records))


def launch(opts, out: Path, argv_common: list[str]) -> None:
    processes = torch.cuda.device_count() if opts.device == "cuda" else 2
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(opts.port),
               "-m", "benchmarks.ddp_overlap", "--worker-out", str(out), "--tag", "multi", *argv_common]  # fmt: skip
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(opts.threads)})
    single = [sys.executable, "-m", "benchmarks.ddp_overlap", "--worker-out", str(out), "--tag", "single",
              *argv_common, "--arms", "TRGL overlapped"]  # fmt: skip
    subprocess.run(single, check=True, env={**os.environ, "OMP_NUM_THREADS": str(opts.threads)})


def summarise(out: Path, opts) -> dict[str, Any]:
    runs = {path.stem: json.loads(path.read_text()) for path in sorted(out.glob("*-rank*.json"))}
    ranks = sorted(int(name.split("rank")[1]) for name in runs if name.startswith("multi-"))
    rows = {}
    for arm in ARMS:
        steps = [r["step_s"] for r in runs.get("multi-rank0", []) if r["arm"] == arm]
        peaks = {rank: [r["peak_bytes"] for r in runs[f"multi-rank{rank}"] if r["arm"] == arm] for rank in ranks}
        rows[arm] = {"step_s_median": statistics.median(steps) if steps else None, "step_s_runs": steps,
                     "peak_mib_per_rank": {rank: env.mib(max(v)) if v and v[0] is not None else None
                                           for rank, v in peaks.items()}}  # fmt: skip
    single = [r["peak_bytes"] for r in runs.get("single-rank0", [])]
    e2e = rows["e2e DDP"]["step_s_median"]
    for row in rows.values():
        row["x_e2e"] = round(row["step_s_median"] / e2e, 3) if e2e and row["step_s_median"] else None
    return {"rows": rows, "single_process_peak_mib": env.mib(max(single)) if single else None,
            "bucket_mib": BUCKET_MB, "processes": len(ranks), "device": opts.device}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    cfg, rows = result["config"], result["summary"]["rows"]
    single = result["summary"]["single_process_peak_mib"]
    lines = [
        "# Gradient averaging over 2 CPU processes: overlapped buckets vs one flat all-reduce vs end-to-end DDP",
        "",
        "```bash",
        result["environment"]["command"],
        "```",
        "",
        f"Run on {result['environment'].get('date_utc')} with torch {result['environment'].get('torch')}, "
        f"{cfg['threads']} thread(s) per process, {result['summary']['processes']} processes on "
        f"{result['summary']['device']} ({result['environment'].get('cpu')}); load average at start "
        f"{result['load_start']}, total {result['total_wall_s']} s.",
        "",
        f"CIFAR ResNet-{cfg['depth']}, global batch {result['summary']['processes'] * cfg['batch_per_process']} "
        f"({cfg['batch_per_process']} per "
        f"process), SGD, {cfg['steps']} steps per run ({cfg['warmup'] + 1} not timed), {cfg['reps']} interleaved "
        f"repetitions; TRGL: parallel mode, K = {cfg['num_modules']}, linear heads; bucket cap {BUCKET_MB} MiB for "
        "DDP and TRGL. See the module docstring of `benchmarks/ddp_overlap.py` for the arms.",
        "",
        "| arm | step time (s, median) | x e2e DDP | runs | peak of one step per rank (MiB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for arm, row in rows.items():
        peaks = row["peak_mib_per_rank"]
        peak = "–" if not peaks or peaks.get(0) is None else " / ".join(str(v) for v in peaks.values())
        lines.append(f"| {arm} | {row['step_s_median']} | {row['x_e2e']} | "
                     f"{', '.join(str(s) for s in row['step_s_runs'])} | {peak} |")  # fmt: skip
    overlapped = rows["TRGL overlapped"]["peak_mib_per_rank"]
    flat = rows["TRGL flat"]["peak_mib_per_rank"]
    lines += [
        "",
        f"Same TRGL step in one process (batch {cfg['batch_per_process']}): peak {single} MiB above the step's start.",
        "",
        "| check | value | target | met |",
        "| --- | --- | --- | --- |",
    ]
    if single is not None and overlapped[0] is not None:
        extra = max(overlapped.values()) - single
        lines.append(f"| overlapped: 2-process peak minus 1-process peak (MiB) | {extra:.2f} | <= one bucket "
                     f"({BUCKET_MB} MiB) | {'yes' if extra <= BUCKET_MB else '**no**'} |")  # fmt: skip
        extra_flat = max(flat.values()) - single
        lines.append(f"| flat (before): 2-process peak minus 1-process peak (MiB) | {extra_flat:.2f} | – | – |")
    lines += ["", "Raw numbers: `ddp_overlap.json`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--depth", type=int, default=56)
    parser.add_argument("--num-modules", type=int, default=4)
    parser.add_argument("--batch-per-process", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--port", type=int, default=29671, help="torch.distributed.run's master port")
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="multi", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.depth, opts.num_modules, opts.batch_per_process, opts.steps, opts.warmup, opts.reps = 8, 3, 8, 4, 1, 1
    if opts.worker_out:
        worker(opts)
        return None
    env.setup(opts.threads)
    out_dir = env.out_dir(opts.out_dir, opts.quick, "ddp_overlap")
    load_start = round(os.getloadavg()[0], 2)
    common = ["--depth", str(opts.depth), "--num-modules", str(opts.num_modules), "--batch-per-process",
              str(opts.batch_per_process), "--steps", str(opts.steps), "--warmup", str(opts.warmup), "--reps",
              str(opts.reps), "--threads", str(opts.threads), "--device", opts.device]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ddp_overlap_runs_") as tmp:
        launch(opts, Path(tmp), common)
        summary = summarise(Path(tmp), opts)
    result = {
        "benchmark": "ddp_overlap",
        "config": {
            k: getattr(opts, k)
            for k in ("depth", "num_modules", "batch_per_process", "steps", "warmup", "reps", "threads", "quick")
        },  # fmt: skip
        "summary": summary,
        "load_start": load_start,
        "environment": env.environment(env.command_line("ddp_overlap", argv)),
        "total_wall_s": round(time.perf_counter() - env.START, 1),
    }
    report.write_json(out_dir / "ddp_overlap.json", result, indent=2)
    report.write_atomically(out_dir / "ddp_overlap.md", markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
