"""Peak host memory of training a Llama-style decoder: end-to-end `Trainer` (with and without gradient checkpointing)
against TRGL sequential (K = 4, 8; with gradient checkpointing; with `aux_head="tied"` when it exists) and parallel,
and the largest decoder each trains under an enforced memory cap (issue 26, item 7).

    python -m benchmarks.memory_decoder            # main table + cap search at 2 and 4 GiB (about 20 min, 2 cores)
    python -m benchmarks.memory_decoder --quick    # tiny decoder, no cap search (seconds)
    python -m benchmarks.memory_decoder --main-from benchmarks/results/memory_decoder.json \
        --only-arms seq_k8_disk,seq_k8_gc_disk --only-width 512  # add these rows to that file, no cap search

Every run is a fresh process (`benchmarks/reports/memory_decoder_arm.py`): the decoder is built from a `LlamaConfig`
(random weights), trained `--steps` optimizer steps per phase (fp32 AdamW, batch of random tokens, `use_cpu=True`,
`save_strategy="no"`, `trgl_save_stages="none"`, `report_to="none"`), and reports `VmHWM` per phase and for the whole
process. The floor of a TRGL phase is computed, not measured: the peak RSS of a process that only imports torch,
transformers and trgl_hf, plus 16 bytes per parameter the phase trains (fp32 weight, gradient and AdamW's two moments),
plus 4 bytes per frozen parameter its head reads (the shared vocabulary matrix of `aux_head="tied"` after module 1).
Caps: each try runs in its own cgroup v1 memory group (`memory.limit_in_bytes` and `memory.memsw.limit_in_bytes` =
cap); a try killed by the OOM killer (SIGKILL, `oom_kill` in `memory.oom_control`) does not fit.

Outputs `memory_decoder.json` and `memory_decoder.md` in `--out-dir` (default `benchmarks/results`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.reports import memory_decoder as report
from benchmarks.reports.memory_decoder_runs import (
    REPO_ROOT,
    Deadline,
    baseline,
    cap_search,
    check_cgroup,
    log,
    run_group,
)

# name -> arm settings; "tied" arms run only when TRGLConfig accepts aux_head="tied". The head is always explicit:
# since commit 7f64871 a decoder built from a config defaults to aux_head="tied". `offload` is always explicit too:
# since commit 3bb1471 the default ("auto") is "disk" for a sequential CPU run. "_disk" arms load their base from a
# checkpoint that an uncapped helper process saved first (`"base": "checkpoint"`: `TRGLModel.from_base(path)`, lazy).
SEQ = {"kind": "trgl", "mode": "sequential", "offload": "none"}
DISK = {"kind": "trgl", "mode": "sequential", "offload": "disk", "base": "checkpoint"}
ARMS = {
    "e2e": {"kind": "e2e"},
    "e2e_gc": {"kind": "e2e", "gc": True},
    "seq_k4": {**SEQ, "k": 4, "head": "native"},
    "seq_k8": {**SEQ, "k": 8, "head": "native"},
    "seq_k8_gc": {**SEQ, "k": 8, "gc": True, "head": "native"},
    "par_k4": {"kind": "trgl", "mode": "parallel", "k": 4, "head": "native", "offload": "none"},
    "seq_k8_tied": {**SEQ, "k": 8, "head": "tied"},
    "par_k4_tied": {"kind": "trgl", "mode": "parallel", "k": 4, "head": "tied", "offload": "none"},
    "seq_k16": {**SEQ, "k": 16, "head": "native"},
    "seq_k4_disk": {**DISK, "k": 4, "head": "native"},
    "seq_k8_disk": {**DISK, "k": 8, "head": "native"},
    "seq_k16_disk": {**DISK, "k": 16, "head": "native"},
    "seq_k8_tied_disk": {**DISK, "k": 8, "head": "tied"},
    "seq_k8_tied_disk_last": {**DISK, "k": 8, "head": "tied", "save_stages": "last"},
    "seq_k8_gc_disk": {**DISK, "k": 8, "gc": True, "head": "native"},
    "seq_k8_tied_gc_disk": {**DISK, "k": 8, "gc": True, "head": "tied"},
}
QUICK_ARMS = {
    "e2e": {"kind": "e2e"},
    "seq_k2": {**SEQ, "k": 2, "head": "native"},
    "seq_k2_disk": {**DISK, "k": 2, "head": "native", "save_stages": "last"},
}

WIDE = {"width": 512, "intermediate": 1408, "vocab": 32000, "seq": 128, "batch": 2}
NARROW = {"width": 256, "intermediate": 704, "vocab": 32000, "seq": 128, "batch": 2}
TINY = {"width": 64, "intermediate": 172, "vocab": 1000, "seq": 32, "batch": 2}
# (model, depth, groups) of the main table: a group's arms run one after another in one worker (the resident /
# offloaded pairs, and offloaded without / with gradient checkpointing: same model, back to back, for the wall-time
# comparison); the narrow rows test "peak independent of depth" (L / K = 3)
MAIN_RUNS = [
    (
        WIDE,
        16,
        [
            ["e2e"],
            ["seq_k8_tied", "seq_k8_tied_disk", "seq_k8_tied_gc_disk"],
            ["seq_k8", "seq_k8_disk", "seq_k8_gc_disk"],
            ["seq_k4", "seq_k4_disk"],
        ],
    ),
    (WIDE, 16, [["seq_k16", "seq_k16_disk"], ["par_k4", "par_k4_tied"]]),
    (NARROW, 24, [["seq_k8", "seq_k8_disk"]]),
    (NARROW, 48, [["seq_k16", "seq_k16_disk"]]),
]
CAP_GRID = [2, 4, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64, 96, 128, 160, 176, 192, 256, 320, 384, 448, 512]
# (cap GiB, arm) in the order they start: the 4 GiB end-to-end / offloaded sequential pair (issue 26's 5x target)
# first; the resident TRGL searches last (their earlier results are in the report's reading)
CAP_ORDER = [
    (4, "e2e"),
    (4, "seq_k8_tied_disk_last"),
    (2, "e2e"),
    (2, "seq_k8_tied_disk"),
    (2, "seq_k8"),
    (2, "seq_k8_tied"),
    (4, "seq_k8_tied"),
    (4, "seq_k8"),
    (2, "par_k4"),
    (2, "e2e_gc"),
    (4, "par_k4"),
    (8, "e2e"),
    (8, "seq_k8"),
]


def tied_available() -> bool:
    """Whether this checkout's `TRGLConfig` accepts `aux_head="tied"` (read from its source, no torch import)."""
    source = (REPO_ROOT / "trgl_hf" / "modeling" / "configuration_trgl.py").read_text()
    return '"tied"' in source.split("aux_head:", 1)[-1].split("\n", 1)[0]


def main_table(runs, arms: dict[str, dict], steps: int, pool, deadline: Deadline) -> tuple[list, list]:
    """Every (model, depth, arm) of `runs` in a fresh process, `pool`'s workers at a time."""
    jobs, skipped = [], []
    for model, layers, groups in runs:
        for group in groups:
            names = [n for n in group if n in arms]
            for name in set(group) - set(names):
                skipped.append({"arm": name, "layers": layers, "width": model["width"], "reason": "not available"})
            jobs.append(pool.submit(run_group, model, layers, names, arms, steps, deadline, 60))
    records = [record for job in jobs for record in job.result()]
    skipped += [r for r in records if r.get("skipped")]
    return [r for r in records if not r.get("skipped")], skipped


def only(runs, names: list[str], width: int | None) -> list:
    """`runs` cut to the arms `names` (in their groups and order) and, given `width`, to models of that width."""
    cut = [(m, layers, [[n for n in g if n in names] for g in groups]) for m, layers, groups in runs]
    return [(m, layers, [g for g in gs if g]) for m, layers, gs in cut if width in (None, m["width"])]


def merged(earlier: dict[str, Any], records: list, skipped: list, command: str, arms: dict) -> dict[str, Any]:
    """An earlier result file with the runs of an `--only-arms` part added (tagged with the part's number, which the
    report shows); its cap searches, baseline and header stay, the part is listed under Reading."""
    number = len(earlier.get("parts") or []) + 2
    part = {
        "command": command,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "git_commit": report.machine()["git_commit"],
        "what": f"part {number}: main-table rows {', '.join(sorted({r['arm'] for r in records}))} (tagged "
        f"[{number}]; run with the earlier file's baseline, no cap search)",
        "load_average": report.machine()["load_average"],
    }
    runs = [*earlier["runs"], *({**r, "part": number} for r in records)]
    settings = {**earlier["settings"], "arms": {**earlier["settings"]["arms"], **arms}}
    keep = {k: v for k, v in earlier.items() if k not in ("table", "cap_table", "targets")}
    return {
        **keep,
        "settings": settings,
        "runs": runs,
        "skipped": [*earlier["skipped"], *skipped],
        "parts": [*(earlier.get("parts") or []), part],
    }


def earlier_commands(earlier: dict[str, Any]) -> list[str]:
    """The commands of an earlier result file and of the files it continued, oldest first."""
    return [*(earlier["settings"].get("main_table_from") or []), earlier["command"]]


def prior_tries(earlier: dict[str, Any], name: str, cap: float, e2e_caps: dict[str, Any]) -> list[dict]:
    """The tries of an earlier result file's search (`name`, `cap`) that fitted or were OOM-killed; for an end-to-end
    arm (a plain `Trainer`: the library plays no part) also those of `--e2e-caps-from`."""
    if name.startswith("e2e") and e2e_caps and not earlier:
        earlier = e2e_caps
    found = [s for s in earlier.get("cap_search", []) if s["arm"] == name and s["cap_gib"] == cap]
    tries = found[0]["tries"] if found else []
    return [t for t in tries if t["ok"] or t.get("failure") == "oom-killed"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny decoder, K = 2, no cap search")
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per phase")
    parser.add_argument("--caps", type=float, nargs="*", default=[2, 4], help="GiB; 8 is slow")
    parser.add_argument(
        "--main-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="reuse the main table, baseline and cap tries of an earlier result file; continue the cap search",
    )
    parser.add_argument(
        "--e2e-caps-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="reuse the end-to-end cap tries of an earlier result file (plain Trainer, independent of the library)",
    )
    parser.add_argument(
        "--only-arms",
        default=None,
        metavar="A,B",
        help="with --main-from: run only these main-table arms (no cap search) and add their rows to that file",
    )
    parser.add_argument("--only-width", type=int, default=None, help="with --only-arms: only models of this width")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time")
    parser.add_argument("--stop-utc", default=None, help="start no run after this UTC time (HH:MM)")
    parser.add_argument("--budget-min", type=float, default=None, help="start no run after this many minutes")
    parser.add_argument("--render-only", type=Path, default=None, metavar="JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.caps, args.steps, args.workers = [], 1, 3  # baseline and the arms at once
    if args.only_arms and not args.main_from:
        parser.error("--only-arms adds rows to an earlier result file: give it with --main-from")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.render_only is not None:
        result = json.loads(args.render_only.read_text())
        print(report.write_outputs(result, args.out_dir or args.render_only.parent))
        return result
    out_dir = args.out_dir or (
        Path(tempfile.mkdtemp(prefix="trgl_memory_decoder_")) if args.quick else REPO_ROOT / "benchmarks" / "results"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m benchmarks.memory_decoder", *(sys.argv[1:] if argv is None else argv)])
    deadline, begin = Deadline(args.stop_utc, args.budget_min), time.perf_counter()
    tied = tied_available()
    arms = {n: a for n, a in (QUICK_ARMS if args.quick else ARMS).items() if tied or a.get("head") != "tied"}
    runs = [(TINY, 4, [["e2e"], ["seq_k2", "seq_k2_disk"]])] if args.quick else MAIN_RUNS
    log(f"{command}: tied heads {'available' if tied else 'not available'}, out {out_dir}")
    if args.only_arms:
        names = args.only_arms.split(",")
        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            records, skipped = main_table(only(runs, names, args.only_width), arms, args.steps, pool, deadline)
        earlier = json.loads(args.main_from.read_text())
        result = merged(earlier, records, skipped, command, {n: arms[n] for n in names if n in arms})
        print(report.write_outputs(result, out_dir))
        return result
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        earlier = json.loads(args.main_from.read_text()) if args.main_from else {}
        e2e_caps = json.loads(args.e2e_caps_from.read_text()) if args.e2e_caps_from else {}
        if earlier:
            records, skipped, base = earlier["runs"], earlier["skipped"], earlier["baseline"]
        else:
            base_job = pool.submit(baseline)
            records, skipped = main_table(runs, arms, args.steps, pool, deadline)
            base = base_job.result()
        check = check_cgroup() if args.caps else {"works": None, "note": "no cap search"}
        log(f"baseline {base['import_peak_rss_bytes'] / 2**20:.0f} MiB; cgroup check: {check['works']}")
        searches = []
        if args.caps and check["works"]:
            jobs = [
                pool.submit(
                    cap_search,
                    WIDE,
                    CAP_GRID,
                    n,
                    arms[n],
                    cap,
                    records,
                    args.steps,
                    deadline,
                    prior_tries(earlier, n, cap, e2e_caps),
                )
                for cap, n in CAP_ORDER
                if cap in args.caps and n in arms
            ]
            searches = [job.result() for job in jobs]
    settings = {
        "steps_per_phase": args.steps,
        "models": {"wide": WIDE, "narrow": NARROW, "tiny": TINY},
        "cap_grid_layers": CAP_GRID,
        "cap_model": WIDE,
        "arms": arms,
        "optimizer": "adamw_torch fp32 lr 1e-4",
        "data": "random token ids (torch.randint, seed 1)",
        "torch_threads_per_run": 1,
        "workers": args.workers,
        "tied_available": tied,
        "main_table_from": earlier_commands(earlier) if earlier else None,
        "e2e_caps_from": e2e_caps.get("command") if e2e_caps else None,
        "e2e_caps_commit": e2e_caps["machine"]["git_commit"] if e2e_caps else None,
    }
    result = {
        "quick": args.quick,
        "command": command,
        "settings": settings,
        "baseline": base,
        "cgroup_check": check,
        "dropped_tries": earlier.get("dropped_tries"),
        "runs": records,
        "skipped": skipped,
        "cap_search": searches,
        "machine": report.machine(),
        "runtime_s": round(time.perf_counter() - begin, 1),
    }
    text = report.write_outputs(result, out_dir)
    log(f"wrote {out_dir}")
    print(text)
    return result


if __name__ == "__main__":
    main()
