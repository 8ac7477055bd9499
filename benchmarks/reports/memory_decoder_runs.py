"""Fresh-process runs of `benchmarks.memory_decoder`: the arm runner in a subprocess (optionally inside a cgroup v1
memory group with a hard limit), the checkpoint an arm loads written first by an uncapped helper process, the load-and-
generate check of a saved stage (uncapped), the cgroup self-check, the import baseline, and the cap search."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
GIB = 1024**3
ARM_MODULE = "benchmarks.reports.memory_decoder_arm"
TRY_KEYS = (
    "layers",
    "params",
    "ok",
    "failure",
    "exit_code",
    "seconds",
    "whole_peak_rss_bytes",
    "whole_peak_anon_bytes",
    "cgroup",
    "cpu_s",
    "train_wall_s",
    "checkpoint_s",
    "generate",
)


def decoder_params(model: dict[str, Any], layers: int) -> int:
    """Parameters of the `LlamaForCausalLM` of `memory_decoder_arm.llama` (untied LM head, no biases)."""
    w, i, v = model["width"], model["intermediate"], model["vocab"]
    return layers * (4 * w * w + 3 * w * i + 2 * w) + w + 2 * v * w


def arm_env() -> dict[str, str]:
    """The child's environment: this checkout first on the path, quiet, offline, one thread."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    }


class Cgroup:
    """A cgroup v1 memory child group with a hard limit; `enter` (a preexec_fn) moves the child into it."""

    def __init__(self, name: str, limit_bytes: int):
        self.path = CGROUP_ROOT / f"trgl-bench-{name}"
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        swap = self.path / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(limit_bytes))

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def stats(self) -> dict[str, int]:
        read = lambda name: int((self.path / name).read_text())  # noqa: E731
        return {
            "max_usage_bytes": read("memory.max_usage_in_bytes"),
            "failcnt": read("memory.failcnt"),
            "oom_kills": self.oom_kills(),
        }

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def run_child(args: list[str], cgroup: Cgroup | None, timeout_s: float) -> tuple[int | None, str]:
    """Run `python -m ARM_MODULE *args` (in `cgroup` when given); returns its exit code (None: timed out) and log."""
    command = [sys.executable, "-m", ARM_MODULE, *args]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=arm_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=cgroup.enter if cgroup else None,
    )
    try:
        out, _ = process.communicate(timeout=timeout_s)
        return process.returncode, out[-3000:]
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        return None, out[-3000:]


def run_arm(
    model: dict[str, Any],
    layers: int,
    name: str,
    arm: dict[str, Any],
    steps: int,
    cap_gib: float | None = None,
    timeout_s: float = 400,
) -> dict[str, Any]:
    """One fresh process training `arm` on the decoder; with `cap_gib`, inside a memory cgroup of that size."""
    scratch = Path(tempfile.mkdtemp(prefix="trgl_memory_decoder_", dir=SCRATCH_DIR))
    spec = {**model, "layers": layers, "steps": steps, "arm": arm, "workdir": str(scratch / "run")}
    cgroup = None
    try:
        written = write_checkpoint(spec, scratch, timeout_s) if arm.get("base") == "checkpoint" else {}
        spec.update(written)
        (scratch / "spec.json").write_text(json.dumps(spec))
        cgroup = Cgroup(f"{os.getpid()}-{scratch.name}", int(cap_gib * GIB)) if cap_gib else None
        begin = time.perf_counter()
        code, log_text = run_child([str(scratch / "spec.json"), str(scratch / "result.json")], cgroup, timeout_s)
        record = {
            "arm": name,
            "layers": layers,
            "width": model["width"],
            "cap_gib": cap_gib,
            "exit_code": code,
            "params": decoder_params(model, layers),
            "seconds": round(time.perf_counter() - begin, 1),
            "checkpoint_s": written.get("checkpoint_s"),
        }
        if cgroup:
            record["cgroup"] = cgroup.stats()
        result_file = scratch / "result.json"
        record["ok"] = code == 0 and result_file.exists()
        if record["ok"]:
            record.update(json.loads(result_file.read_text()))
            if record.get("stages"):
                record["generate"] = generate_check(scratch / "run" / record["stages"][-1])
        else:
            killed = cgroup.oom_kills() > 0 if cgroup is not None else code == -signal.SIGKILL
            record["failure"] = "oom-killed" if killed else ("timeout" if code is None else "error")
            record["log_tail"] = log_text[-1500:]
        log(f"{name} L={layers} W={model['width']} cap={cap_gib}: {summary(record)}")
        return record
    finally:
        if cgroup:
            cgroup.remove()
        shutil.rmtree(scratch, ignore_errors=True)


SCRATCH_DIR = os.environ.get("TRGL_BENCH_SCRATCH") or None  # checkpoints and run folders (default: the temp dir)


def write_checkpoint(spec: dict[str, Any], scratch: Path, timeout_s: float) -> dict[str, Any]:
    """The spec's decoder built and `save_pretrained` (sharded) into `scratch/base` by an uncapped helper process."""
    begin = time.perf_counter()
    (scratch / "base-spec.json").write_text(json.dumps(spec))
    code, text = run_child(["--save-base", str(scratch / "base-spec.json"), str(scratch / "base")], None, timeout_s)
    if code != 0:
        raise RuntimeError(f"checkpoint helper failed ({code}):\n{text}")
    for file in (scratch / "base").iterdir():  # on disk, out of the page cache: the capped run reads it cold
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)
    return {
        "checkpoint": str(scratch / "base"),
        "checkpoint_params": decoder_params(spec, spec["layers"]),
        "checkpoint_s": round(time.perf_counter() - begin, 1),
    }


def generate_check(stage: Path) -> dict[str, Any]:
    """Load `stage` with `AutoModelForCausalLM.from_pretrained` and generate a few tokens, in an uncapped process."""
    out = stage.parent.parent / "generate.json"
    code, text = run_child(["--generate", str(stage), str(out)], None, 600)
    if code != 0 or not out.exists():
        return {"stage": stage.name, "ok": False, "exit_code": code, "log_tail": text[-800:]}
    return {"stage": stage.name, "ok": True, **json.loads(out.read_text())}


def run_group(model, layers, names: list[str], arms: dict, steps: int, deadline, need_s: float) -> list[dict]:
    """Arms of one model run one after another in this worker (the wall-time pairs: same model, back to back)."""
    records = []
    for name in names:
        if deadline.left_s() < need_s:
            records.append({"skipped": True, "arm": name, "layers": layers, "reason": "deadline"})
        else:
            records.append(run_arm(model, layers, name, arms[name], steps))
    return records


def summary(record: dict[str, Any]) -> str:
    if not record["ok"]:
        return f"{record['failure']} (exit {record['exit_code']}, {record['seconds']} s)"
    return (
        f"peak {record['whole_peak_rss_bytes'] / 2**20:.0f} MiB (anon {record['whole_peak_anon_bytes'] / 2**20:.0f}), "
        f"{record['cpu_s']} CPU s, train {record['train_wall_s']} s, {record['seconds']} s"
        + (f", generate {record['generate'].get('ok')}" if record.get("generate") else "")
    )


def log(message: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def check_cgroup(limit_mib: int = 200) -> dict[str, Any]:
    """A child allocating 2x the limit inside a group must be killed, one allocating half of it must not."""
    result: dict[str, Any] = {"limit_mib": limit_mib, "method": "cgroup v1 memory"}
    code = "import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b'x' * len(b[::4096])"
    for mib in (limit_mib // 2, 2 * limit_mib):
        try:
            group = Cgroup(f"check-{os.getpid()}-{mib}", limit_mib << 20)
        except OSError as error:
            return {**result, "works": False, "error": str(error)}
        try:
            exit_code = subprocess.run([sys.executable, "-c", code, str(mib)], preexec_fn=group.enter).returncode
            result[f"alloc_{mib}_mib"] = {"exit_code": exit_code, **group.stats()}
        finally:
            group.remove()
    small, large = result[f"alloc_{limit_mib // 2}_mib"], result[f"alloc_{2 * limit_mib}_mib"]
    result["works"] = small["exit_code"] == 0 and large["exit_code"] == -signal.SIGKILL and large["oom_kills"] > 0
    return result


def baseline() -> dict[str, Any]:
    """Peak RSS of a fresh process that only imports torch, transformers and trgl_hf."""
    with tempfile.TemporaryDirectory() as folder:
        code, text = run_child(["--baseline", f"{folder}/baseline.json"], None, 120)
        if code != 0:
            raise RuntimeError(f"baseline process failed:\n{text}")
        return json.loads(Path(f"{folder}/baseline.json").read_text())


class Deadline:
    """Stops starting runs after a wall-clock time (UTC `HH:MM`) or a number of minutes from now."""

    def __init__(self, utc: str | None, minutes: float | None):
        now = dt.datetime.now(dt.timezone.utc)
        self.at = now + dt.timedelta(minutes=minutes or 1e6)
        if utc:
            hour, minute = map(int, utc.split(":"))
            at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            self.at = min(self.at, at if at > now else at + dt.timedelta(days=1))

    def left_s(self) -> float:
        return (self.at - dt.datetime.now(dt.timezone.utc)).total_seconds()


def predicted_start(
    model: dict[str, Any], grid: list[int], records: list[dict], name: str, cap_gib: float, arm: dict | None = None
) -> int:
    """Index of the grid depth a straight-line fit of the main table's peaks (by depth, at the cap's width; the arm's
    name less a `_last` suffix) puts just under the cap (one point: 16 bytes per parameter of a layer as the slope, of
    a layer per K for an offloaded arm, which holds one module); the middle of the grid without any."""
    name = name.removesuffix("_last")
    points = sorted(
        (r["layers"], r["whole_peak_rss_bytes"])
        for r in records
        if r["arm"] == name and r.get("ok") and r["width"] == model["width"]
    )
    if not points:
        return len(grid) // 2
    (l0, p0), (l1, p1) = points[0], points[-1]
    per_layer = 16 * (decoder_params(model, 2) - decoder_params(model, 1))
    if arm and arm.get("offload") == "disk":
        per_layer //= arm["k"]
    slope = max((p1 - p0) / (l1 - l0), 1.0) if l1 > l0 else per_layer
    depth = l0 + (cap_gib * GIB - p0) / slope
    under = [i for i, d in enumerate(grid) if d <= depth]
    return under[-1] if under else 0


def cap_search(
    model,
    depths: list[int],
    name: str,
    arm: dict,
    cap_gib: float,
    records: list[dict],
    steps: int,
    deadline: Deadline,
    prior: list[dict] = (),
) -> dict:
    """Largest of `depths` (at least K) that trains under the cap: probe the depth that the main table's `records`
    predict, step outwards, then bisect. `prior`: tries of an earlier run of the same search (kept, not repeated)."""
    grid = [d for d in depths if d >= arm.get("k", 1)]
    fits, fails, tries = -1, len(grid), [{**t, "earlier_run": True} for t in prior]
    for t in prior:
        if t["ok"] and t["layers"] in grid:
            fits = max(fits, grid.index(t["layers"]))
        elif t.get("failure") == "oom-killed" and t["layers"] in grid:
            fails = min(fails, grid.index(t["layers"]))
    probe = min(max(predicted_start(model, grid, records, name, cap_gib, arm), 0), len(grid) - 1)
    if fails - fits > 1 and not fits < probe < fails:
        probe = (fits + fails) // 2
    while fails - fits > 1:
        if deadline.left_s() < 150:
            return {"arm": name, "cap_gib": cap_gib, "tries": tries, "complete": False, "reason": "deadline"}
        timeout_s = min(900, deadline.left_s() + 300)  # a try started before the deadline may end after it
        record = run_arm(model, grid[probe], name, arm, steps, cap_gib=cap_gib, timeout_s=timeout_s)
        tries.append({k: record.get(k) for k in TRY_KEYS})
        if record.get("failure") == "timeout":
            return {"arm": name, "cap_gib": cap_gib, "tries": tries, "complete": False, "reason": "timeout"}
        if record["ok"]:
            fits = probe
            probe = probe + 1 if probe + 1 < fails and fails - fits > 2 else (fits + fails) // 2
        else:
            if record["failure"] != "oom-killed":
                log(record.get("log_tail", ""))
            fails = probe
            probe = probe - 1 if probe - 1 > fits and fails - fits > 2 else (fits + fails) // 2
        if fails - fits > 1 and not fits < probe < fails:
            probe = (fits + fails) // 2
    largest = grid[fits] if fits >= 0 else None
    return {
        "arm": name,
        "cap_gib": cap_gib,
        "tries": tries,
        "complete": True,
        "largest_layers": largest,
        "largest_params": decoder_params(model, largest) if largest else None,
        "smallest_failing_layers": grid[fails] if fails < len(grid) else None,
    }
