"""Sequential TRGL with the prefix cache (in memory, on disk, none) against end-to-end `transformers.Trainer`: the
wall time of `train()`, in one process, on the same model, data and number of epochs (per module for TRGL).

    python -m benchmarks.prefix_cache_speed          # CIFAR-10, 2,048 images, batch 128: ResNet-56 K=4, ResNet-110 K=8
    python -m benchmarks.prefix_cache_speed --quick  # smoke mode: ResNet-8 K=2 on digits, temporary output (seconds)

Arms, interleaved in rotated order every repetition: `e2e` (`Trainer.train()`), `memory` (`TRGLTrainer.train()`,
`trgl_mode="sequential"`, `trgl_prefix_cache="always"`, the default budget), `disk` (the same with
`trgl_prefix_cache_max_memory="1KB"`: memory-mapped safetensors shards) and `none` (`trgl_prefix_cache="never"`).
Timers monkeypatched on the trainers' methods split TRGL's time into cache building, the training loop, per-phase
overhead and the rest; the CPU time used by other processes during each run is measured from /proc/stat and a run
disturbed by them is repeated. Outputs `prefix_cache_speed.{json,md}` in `--out-dir` (default `benchmarks/results`).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import transformers
from transformers import TrainingArguments

from benchmarks.common import data, env, models, timing
from benchmarks.common.env import log
from benchmarks.reports import prefix_cache as prefix_report
from trgl_hf import TRGLTrainer, TRGLTrainingArguments
from trgl_hf.distributed.strategy import SingleProcess
from trgl_hf.training import trainer as trainer_module
from trgl_hf.training.phase_cache import PhasePrefixCache
from trgl_hf.training.prefix_cache import PrefixCache, ShardWriter
from trgl_hf.training.run_state import RunState

ARMS = ("e2e", "memory", "disk", "none")
TIMED = [  # (class or module, function, label): wall time of every call while a run is timed
    (PhasePrefixCache, "build", "cache_build"),
    (ShardWriter, "add", "cache_store_add"),
    (ShardWriter, "flush", "cache_store_flush"),
    (PrefixCache, "__getitems__", "cache_gather"),
    (SingleProcess, "prepare_phase", "reset"),
    (transformers.Trainer, "train", "trainer_train"),
    (trainer_module, "finish_phase", "finish_phase"),
    (RunState, "complete_phase", "save_progress"),
    (PhasePrefixCache, "drop", "drop_cache"),
    (TRGLTrainer, "_end_run", "end_run"),
]


class Timers:
    """Wraps the `TIMED` methods on their classes while active; `calls[label]` = wall seconds of each call."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.saved: list[tuple[type, str, Any]] = []

    def __enter__(self) -> Timers:
        for cls, name, label in TIMED:
            original = cls.__dict__[name]
            self.saved.append((cls, name, original))

            def wrapper(*args, _original=original, _label=label, **kwargs):
                begin = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.calls[_label].append(time.perf_counter() - begin)

            setattr(cls, name, wrapper)
        return self

    def __exit__(self, *exc: Any) -> None:
        for cls, name, original in reversed(self.saved):
            setattr(cls, name, original)


class CacheLog(logging.Handler):
    """The `trgl_hf.training.prefix_cache` INFO lines (which storage was chosen, and why)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def cpu_snapshot() -> tuple[float, float, float]:
    """(wall, CPU seconds of the whole machine from /proc/stat, CPU seconds of this process)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait (USER_HZ = 100)
    return time.perf_counter(), busy / 100.0, time.process_time()


def others_share(begin: tuple[float, float, float], end: tuple[float, float, float], cores: int) -> float:
    """Fraction of the machine's CPU capacity that other processes used between two snapshots."""
    wall = max(end[0] - begin[0], 1e-9)
    return max(0.0, (end[1] - begin[1]) - (end[2] - begin[2])) / (wall * cores)


def wait_until_idle(max_wait_s: float, threshold: float, cores: int) -> float:
    """Wait (up to `max_wait_s`) until other processes use under `threshold` of the CPUs over 10 s; seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        begin = cpu_snapshot()
        time.sleep(10)
        if others_share(begin, cpu_snapshot(), cores) < threshold:
            break
    return round(time.perf_counter() - start, 1)


def training_args(arm: str, out: Path, epochs: int, batch: int) -> TrainingArguments:
    common = dict(
        output_dir=str(out),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch,
        learning_rate=0.05,
        weight_decay=5e-4,
        optim="sgd",
        optim_args="momentum=0.9",
        lr_scheduler_type="constant",
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
    )
    if arm == "e2e":
        return TrainingArguments(**common)
    cache = {"memory": "always", "disk": "always", "none": "never"}[arm]
    return TRGLTrainingArguments(
        **common,
        trgl_mode="sequential",
        trgl_prefix_cache=cache,
        trgl_save_stages=False,
        trgl_prefix_cache_max_memory="1KB" if arm == "disk" else None,
    )


def run_arm(arm: str, spec: dict[str, Any], dataset, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """One timed `train()` of `arm` (a fresh model with the same initial weights every time)."""
    if arm == "e2e":
        model = models.build_resnet(spec["depth"], seed=0)
    else:
        model = models.build_trgl_resnet(spec["depth"], spec["K"], "equal", seed=0, aux_head=args.aux_head)
    out = Path(tempfile.mkdtemp(prefix=f"{arm}-", dir=scratch))
    trainer = timing.make_trainer(model, training_args(arm, out, spec["epochs"], args.batch_size), dataset)
    steps = timing.StepTimes()
    trainer.add_callback(steps)
    cache_log = CacheLog()
    logging.getLogger("trgl_hf.training.prefix_cache").addHandler(cache_log)
    gc.collect()
    load_before = os.getloadavg()
    begin = cpu_snapshot()
    try:
        with Timers() as timers:
            trainer.train()
        end = cpu_snapshot()
    finally:
        logging.getLogger("trgl_hf.training.prefix_cache").removeHandler(cache_log)
    record = {
        "model": spec["name"],
        "arm": arm,
        "wall_s": round(end[0] - begin[0], 3),
        "cpu_s": round(end[2] - begin[2], 3),
        "others_cpu_share": round(others_share(begin, end, args.cores), 3),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "storage_log": cache_log.lines,
        "timers_s": {label: [round(t, 4) for t in values] for label, values in timers.calls.items()},
        "step_wall_s": [round(sum(p["wall"]), 3) for p in steps.phases],
        "steps": [len(p["wall"]) for p in steps.phases],
    }
    expected = {"memory": "in memory", "disk": "on disk"}.get(arm)
    if expected and not (cache_log.lines and all(expected in line for line in cache_log.lines)):
        raise RuntimeError(f"arm {arm}: expected every cache {expected}, the log says {cache_log.lines}")
    del trainer, model
    shutil.rmtree(out, ignore_errors=True)
    gc.collect()
    return record


def reusable_runs(args: argparse.Namespace) -> dict[tuple, dict[str, Any]]:
    """The undisturbed runs of `--reuse` with the same data and batch, by (model, epochs, repetition, arm)."""
    if args.reuse is None:
        return {}
    old = prefix_report.load(args.reuse)
    if (old["config"]["train_size"], old["config"]["batch_size"]) != (args.train_size, args.batch_size):
        return {}
    epochs = {spec["name"]: spec["epochs"] for spec in old["models"]}
    return {
        (run["model"], epochs[run["model"]], run["rep"], run["arm"]): {**run, "reused_from": str(args.reuse)}
        for run in old["runs"]
        if run["others_cpu_share"] <= args.busy_threshold
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: ResNet-8 K=2 on 64 digits, 1 epoch")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--models", nargs="+", default=None, help="DEPTH:K[:EPOCHS], e.g. 56:4:4 110:8:2")
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="epochs (per module for TRGL) unless in --models")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--aux-head", default="linear", choices=["linear", "conv"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--busy-threshold", type=float, default=0.10, help="others' CPU share that voids a run")
    parser.add_argument("--retries", type=int, default=3, help="repeats of a run disturbed by other processes")
    parser.add_argument("--reuse", type=Path, default=None, metavar="JSON", help="keep the undisturbed runs of a JSON")
    parser.add_argument("--render-only", type=Path, default=None, metavar="JSON")
    args = parser.parse_args(argv)
    quick = args.quick
    args.models = args.models or (["8:2"] if quick else ["56:4:4", "110:8:2"])
    args.train_size = args.train_size or (64 if quick else 2048)
    args.batch_size = args.batch_size or (16 if quick else 128)
    args.epochs = args.epochs or (1 if quick else 4)
    args.reps = args.reps or (1 if quick else 2)
    args.max_wait_s, args.retries = (0, 0) if quick else (900, args.retries)
    args.cores = os.cpu_count() or 1
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render_only is not None:
        result = prefix_report.load(args.render_only)
        print(prefix_report.write_speed(result, args.out_dir or args.render_only.parent))
        return result
    env.setup(args.threads)  # no gc freeze: the per-phase gc.collect of Trainer.train costs what it costs users
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated (SIGTERM): rerun with --reuse to keep the runs"))
    logging.getLogger("trgl_hf.training.prefix_cache").setLevel(logging.INFO)
    out_dir = env.out_dir(args.out_dir, args.quick, "prefix_cache_speed")
    command = env.command_line("prefix_cache_speed", argv)
    cifar = None if args.quick else env.shared_data("cifar10")
    if cifar is None:
        images, labels = data.digits_as_cifar(args.train_size, 1)["train"]
        data_note = f"scikit-learn digits as 3x32x32 images ({args.train_size} rows, --quick stand-in)"
    else:
        images, labels = data.cifar10(cifar, args.train_size, 10)["train"]
        data_note = f"the first {args.train_size} CIFAR-10 training images of {cifar}, normalised, no augmentation"
    dataset = data.Plain(images, labels)
    log(f"{command}: {data_note}; out {out_dir}")
    scratch = Path(tempfile.mkdtemp(prefix="trgl_prefix_cache_speed_"))
    specs = []
    for text in args.models:
        depth, k, *epochs = (int(v) for v in text.split(":"))
        specs.append(
            {"depth": depth, "K": k, "epochs": epochs[0] if epochs else args.epochs, "name": f"ResNet-{depth} K={k}"}
        )
    result: dict[str, Any] = {
        "benchmark": "prefix_cache_speed",
        "quick": args.quick,
        "config": {key: value for key, value in vars(args).items() if key not in ("out_dir", "render_only", "reuse")},
        "data": data_note,
        "models": specs,
        "runs": [],
        "discarded_runs": [],
    }

    def write() -> str:  # after every run: an interrupted benchmark leaves a consistent report of what it measured
        result["environment"] = env.environment(command)
        result["summary"] = prefix_report.speed_summary(result)
        return prefix_report.write_speed(result, out_dir)

    reusable = reusable_runs(args)
    try:
        warm = data.Plain(images[: 2 * args.batch_size], labels[: 2 * args.batch_size])
        for arm in ("e2e", "disk"):  # one-time costs (kernels, imports) out of the timed runs
            run_arm(arm, {**specs[0], "epochs": 1}, warm, args, scratch)
        for spec in specs:
            for rep in range(args.reps):
                order = args.arms[rep % len(args.arms) :] + args.arms[: rep % len(args.arms)]
                for arm in order:
                    if (spec["name"], spec["epochs"], rep, arm) in reusable:
                        result["runs"].append(reusable.pop((spec["name"], spec["epochs"], rep, arm)))
                        continue
                    for attempt in range(args.retries + 1):
                        waited = wait_until_idle(args.max_wait_s, args.busy_threshold, args.cores)
                        record = {**run_arm(arm, spec, dataset, args, scratch), "rep": rep, "waited_s": waited}
                        log(
                            f"{spec['name']} rep {rep + 1} {arm}: {record['wall_s']:.1f} s wall, "
                            f"{record['cpu_s']:.1f} s CPU, others {record['others_cpu_share']:.0%}"
                        )
                        if record["others_cpu_share"] <= args.busy_threshold or attempt == args.retries:
                            break
                        result["discarded_runs"].append(record)
                    result["runs"].append(record)
                    text = write()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"wrote {out_dir}")
    print(text)
    return result


if __name__ == "__main__":
    main()
