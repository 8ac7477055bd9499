"""Process setup, logging, the environment description, output folders and number formatting."""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

MIB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
START = time.perf_counter()
LOAD_AT_START = list(os.getloadavg())


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


def mib(num_bytes: float | None, digits: int = 2) -> float | None:
    return None if num_bytes is None else round(num_bytes / MIB, digits)


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: `–` for a missing value, floats with `digits` decimals."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def setup(threads: int = 1, freeze_gc: bool = False) -> None:
    """One intra-op thread (CPU time then barely depends on other jobs), quiet transformers, optional gc freeze."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if freeze_gc:
        gc.collect()
        gc.freeze()  # the many long-lived objects of torch/transformers: keeps gc.collect() fast


def out_dir(requested: str | Path | None, quick: bool, prefix: str) -> Path:
    """`requested`, else a new temporary folder in quick mode, else `benchmarks/results`."""
    if requested is not None:
        path = Path(requested)
    elif quick:
        path = Path(tempfile.mkdtemp(prefix=f"trgl_{prefix}_"))
    else:
        path = RESULTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reproduces this run, e.g. `python -m benchmarks.memory_speed --quick`."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m", f"benchmarks.{module}", *args])


def shared_data(name: str) -> Path | None:
    """`../shared/data/<name>` (or `$SHARED_DATA/<name>`, `$TRGL_SHARED_DATA/<name>`) when it exists."""
    root = os.environ.get("SHARED_DATA") or os.environ.get("TRGL_SHARED_DATA") or REPO_ROOT.parent / "shared" / "data"
    path = Path(root) / name
    return path if path.exists() else None


def _git(*args: str) -> str | None:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout
    return None


def environment(command: str | None = None) -> dict[str, Any]:
    """Versions, machine, git state and load: what a results file needs to be read later."""
    import datasets
    import transformers

    import trgl_hf

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dirty = _git("status", "--porcelain", "trgl_hf")
    return {
        "command": command,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "trgl_hf": getattr(trgl_hf, "__version__", None),
        "git_commit": (_git("rev-parse", "HEAD") or "").strip() or None,
        "git_uncommitted_trgl_hf": [line.strip() for line in (dirty or "").splitlines() if line.strip()],
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": LOAD_AT_START,
        "load_average_at_end": list(os.getloadavg()),
        "runtime_s": round(time.perf_counter() - START, 1),
    }
