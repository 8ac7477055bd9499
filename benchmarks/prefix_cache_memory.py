"""Host memory of the prefix cache: peak RSS of a sequential TRGL run against the number of training examples, with a
fixed cache budget (`trgl_prefix_cache_max_memory`), minus the peak of the same run without the cache.

    python -m benchmarks.prefix_cache_memory          # GPT-2 (Tiny Shakespeare), ResNet-20 (CIFAR-10), 64 MiB budget
    python -m benchmarks.prefix_cache_memory --quick  # smoke mode: tiny sizes and budget, temporary output (seconds)

Every point is a fresh subprocess (`--point JSON`) running `TRGLTrainer.train()` (`trgl_mode="sequential"`, 2 steps
per module, so that building the caches dominates) with `trgl_prefix_cache="auto"` (the dataset is a stored Arrow
dataset: deterministic, cached) or `"never"`. Peak RSS: `VmHWM` of /proc/self/status (exact, whole process life);
anonymous and file-backed RSS (`RssAnon`, `RssFile` of /proc/self/status) sampled every 2 ms by a thread. The
datasets are written with `save_to_disk` and read with `load_from_disk` (memory-mapped Arrow: their pages are
file-backed, as are a disk cache's). Outputs `prefix_cache_memory.{json,md,png}` in `--out-dir`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import data, env, models
from benchmarks.common.env import MIB, log
from benchmarks.reports import prefix_cache as prefix_report

STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
PLAN = re.compile(
    r"module (\d+): ([\d.]+) MiB \((\d+) rows x ([\d.]+) KiB\), (within|over) the budget.*"
    r"stored ([\d.]+) MiB in (\d+) shards"
)


def status() -> dict[str, int]:
    """Bytes of `STATUS_KEYS` in /proc/self/status."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as stream:
        for line in stream:
            key, _, value = line.partition(":")
            if key in STATUS_KEYS:
                values[key] = int(value.split()[0]) * 1024
    return values


class Sampler(threading.Thread):
    """Peaks of VmRSS, RssAnon and RssFile, read every `interval` seconds until `stop()`."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval, self.peaks, self.samples, self._done = interval, dict(status()), 0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            for key, value in status().items():
                self.peaks[key] = max(self.peaks[key], value)
            self.samples += 1
            time.sleep(self.interval)

    def stop(self) -> dict[str, int]:
        self._done.set()
        self.join()
        return self.peaks


# ---------------------------------------------------------------------------- one point (child process)


def run_point(spec: dict[str, Any]) -> dict[str, Any]:
    from datasets import load_from_disk
    from transformers import GPT2Config, GPT2LMHeadModel

    from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

    env.setup(spec["threads"])
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # the storage chosen for every cache
    logger = logging.getLogger("trgl_hf.training.prefix_cache")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    dataset = load_from_disk(spec["data"]).select(range(spec["rows"])).with_format("torch")
    if spec["model"] == "gpt2":
        special = spec["vocab_size"] - 1  # the recipe's character vocabulary + <|endoftext|>
        config = GPT2Config(
            vocab_size=spec["vocab_size"],
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=128,
            bos_token_id=special,
            eos_token_id=special,
            pad_token_id=special,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        model = TRGLModel.from_base(GPT2LMHeadModel(config), TRGLConfig(num_modules=spec["K"]))
    else:
        model = models.build_trgl_resnet(spec["depth"], spec["K"], "equal", aux_head="linear")
    args = TRGLTrainingArguments(
        output_dir=spec["out"],
        trgl_mode="sequential",
        max_steps=spec["steps"],
        per_device_train_batch_size=64,
        trgl_prefix_cache="auto" if spec["arm"] == "cache" else "never",
        trgl_prefix_cache_max_memory=spec["budget"],
        trgl_save_stages=False,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        optim="sgd",
    )
    trainer = TRGLTrainer(model=model, args=args, train_dataset=dataset)
    before = status()
    sampler = Sampler()
    sampler.start()
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    peaks = sampler.stop()
    keys = ("module", "estimate_mib", "rows", "kib_per_row", "fits", "stored_mib", "shards")
    caches = [dict(zip(keys, m.groups())) for m in map(PLAN.search, lines) if m]
    if spec["arm"] == "cache" and len(caches) != spec["K"] - 1:
        raise RuntimeError(f"expected {spec['K'] - 1} caches, the log says {lines}")
    return {
        **{key: spec[key] for key in ("model", "rows", "arm", "repeat")},
        "vm_hwm_bytes": status()["VmHWM"],
        "sampled_peak_bytes": {key: peaks[key] for key in ("VmRSS", "RssAnon", "RssFile")},
        "before_train_bytes": {key: before[key] for key in ("VmRSS", "RssAnon", "RssFile")},
        "samples": sampler.samples,
        "train_wall_s": round(wall, 2),
        "caches": [{k: v if k == "fits" else float(v) for k, v in c.items()} for c in caches],
        "log": lines,
    }


# ---------------------------------------------------------------------------- datasets and points (parent process)


def build_datasets(args: argparse.Namespace, folder: Path) -> dict[str, dict[str, Any]]:
    """The largest dataset of each model, saved with `save_to_disk` (each point selects its first rows)."""
    import numpy as np
    from datasets import Array3D, Dataset, Features, Value
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()

    out = {}
    text_path = None if args.quick else env.shared_data("tiny_shakespeare")
    text = data.synthetic_text(20000) if text_path is None else (text_path / "input.txt").read_text(encoding="utf-8")
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = np.array([vocab[c] for c in text], dtype=np.int64)
    blocks = ids[: len(ids) // 128 * 128].reshape(-1, 128)
    rows = max(args.sizes["gpt2"])
    repeated = np.concatenate([blocks] * -(-rows // len(blocks)))[:rows]
    Dataset.from_dict({"input_ids": repeated, "labels": repeated}).save_to_disk(str(folder / "gpt2"))
    source = "Tiny Shakespeare" if text_path else "synthetic text (--quick)"
    out["gpt2"] = {
        "path": str(folder / "gpt2"),
        "vocab_size": len(vocab) + 1,
        "note": f"{source}: {len(blocks)} distinct 128-character blocks, repeated to {rows}",
    }
    rows = max(args.sizes["resnet"])
    cifar = None if args.quick else env.shared_data("cifar10")
    images, labels = (data.digits_as_cifar(rows, 1) if cifar is None else data.cifar10(cifar, rows, 10))["train"]
    features = Features({"pixel_values": Array3D((3, 32, 32), "float32"), "labels": Value("int64")})
    Dataset.from_dict({"pixel_values": images.numpy(), "labels": labels.numpy()}, features=features).save_to_disk(
        str(folder / "resnet")
    )
    source = "CIFAR-10 (the first training images, normalised)" if cifar else "scikit-learn digits (--quick)"
    out["resnet"] = {"path": str(folder / "resnet"), "note": f"{source}: {rows} distinct images, float32"}
    return out


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.prefix_cache_memory", "--point", json.dumps(spec)]
    done = subprocess.run(command, cwd=env.REPO_ROOT, capture_output=True, text=True)
    shutil.rmtree(spec["out"], ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"point {spec['model']} {spec['rows']} {spec['arm']} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    log(
        f"{spec['model']} {spec['rows']:>6} rows {spec['arm']:>5}: peak RSS {result['vm_hwm_bytes'] / MIB:.0f} "
        "MiB, "
        f"anon {result['sampled_peak_bytes']['RssAnon'] / MIB:.0f} MiB, caches "
        f"{[(c['estimate_mib'], c['fits']) for c in result['caches']]}"
    )
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes, a 256 KiB budget")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--budget", default=None, help="trgl_prefix_cache_max_memory (default 64MiB)")
    parser.add_argument("--gpt2-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--resnet-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--parallel", type=int, default=2, help="points measured at once (one torch thread each)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per point and arm (the minimum is kept)")
    parser.add_argument("--point", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--render-only", type=Path, default=None, metavar="JSON")
    args = parser.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats or (1 if quick else 2)
    args.budget = args.budget or ("256KiB" if quick else "64MiB")
    args.sizes = {
        "gpt2": args.gpt2_sizes or ([96] if quick else [256, 1024, 1536, 3072, 6144, 12288, 20480]),
        "resnet": args.resnet_sizes or ([48] if quick else [128, 512, 768, 2048, 4096, 8192, 12288]),
    }
    args.specs = {"gpt2": {"K": 2}, "resnet": {"K": 2 if quick else 3, "depth": 8 if quick else 20}}
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.point is not None:
        print(json.dumps(run_point(json.loads(args.point))))
        return {}
    if args.render_only is not None:
        result = prefix_report.load(args.render_only)
        print(prefix_report.write_memory(result, args.out_dir or args.render_only.parent))
        return result
    out_dir = env.out_dir(args.out_dir, args.quick, "prefix_cache_memory")
    command = env.command_line("prefix_cache_memory", argv)
    scratch = Path(tempfile.mkdtemp(prefix="trgl_prefix_cache_memory_"))
    log(f"{command}: budget {args.budget}, sizes {args.sizes}, out {out_dir}")
    try:
        datasets = build_datasets(args, scratch)
        jobs = []
        for name, sizes in args.sizes.items():
            for rows in sizes:
                for repeat, arm in itertools.product(range(args.repeats), ("cache", "never")):
                    spec = {
                        "repeat": repeat,
                        "model": name,
                        "rows": rows,
                        "arm": arm,
                        "budget": args.budget,
                        "steps": 2,
                        "threads": 1,
                        "data": datasets[name]["path"],
                        "vocab_size": datasets[name].get("vocab_size"),
                        "out": str(scratch / f"run-{len(jobs)}"),
                        **args.specs[name],
                    }
                    jobs.append(spec)
        with ThreadPoolExecutor(args.parallel) as pool:
            points = list(pool.map(run_child, jobs))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "benchmark": "prefix_cache_memory",
        "quick": args.quick,
        "environment": env.environment(command),
        "config": {
            "budget": args.budget,
            "sizes": args.sizes,
            "models": args.specs,
            "steps_per_module": 2,
            "batch_size": 64,
            "parallel": args.parallel,
            "repeats": args.repeats,
        },
        "data": {name: {k: v for k, v in info.items() if k != "path"} for name, info in datasets.items()},
        "points": points,
    }
    result["summary"] = prefix_report.memory_summary(result)
    text = prefix_report.write_memory(result, out_dir)
    log(f"wrote {out_dir}")
    print(text)
    return result


if __name__ == "__main__":
    main()
