"""Every benchmark runs end to end in its `--quick` mode (tiny models and data, output to a temporary folder), so a
benchmark that breaks fails CI. Each test runs its benchmark in a subprocess; `pytest -n 2` spreads them over the two
workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
TIMEOUT_S = 600  # a hang guard, not a timing target (CI shares 2 cores between two test workers)

# module, extra arguments, the files its --quick run must write
BENCHMARKS = {
    "memory_speed": ([], ["memory_speed.json", "memory_speed.md", "memory_speed.png"]),
    "memory_transformers": ([], ["memory_transformers.json", "memory_transformers.md"]),
    "gpu_resnet110": (["--device", "cpu"], ["gpu_resnet110.json", "gpu_resnet110.md"]),
    "ddp_overlap": ([], ["ddp_overlap.json", "ddp_overlap.md"]),
    "accuracy_cifar10": ([], ["accuracy_cifar10.json", "accuracy_cifar10.md", "accuracy_cifar10.png"]),
    "lm_tiny_shakespeare": ([], ["tiny_shakespeare_gpt2.json", "tiny_shakespeare_gpt2.md"]),
    "text_sst2_minilm": ([], ["sst2_minilm.json", "sst2_minilm.md", "sst2_minilm.png"]),
    "prefix_cache_speed": ([], ["prefix_cache_speed.json", "prefix_cache_speed.md"]),
    "prefix_cache_memory": ([], ["prefix_cache_memory.json", "prefix_cache_memory.md", "prefix_cache_memory.png"]),
    "memory_decoder": ([], ["memory_decoder.json", "memory_decoder.md"]),
    "gpu_memory_decoder": (["--device", "cpu"], ["gpu_memory_decoder.json", "gpu_memory_decoder.md"]),
    "mlm_pretraining": ([], ["mlm_pretraining.json", "mlm_pretraining.md"]),
}
SLOW = {"ddp_overlap", "prefix_cache_memory", "gpu_memory_decoder"}
"""The longest quick runs (two processes; cache memory at several sizes; the GPU script's CPU path, which the decoder
benchmark's quick run mostly covers) run with `-m slow`, keeping the default suite's time."""


def quick_run(name: str, root: Path) -> tuple[int | None, str, Path]:
    """Run `python -m benchmarks.<name> --quick` into `root/<name>`: (exit status, or None past the hang guard; its
    log; its output folder)."""
    extra, _ = BENCHMARKS[name]
    out = root / name
    command = [sys.executable, "-m", f"benchmarks.{name}", "--quick", "--out-dir", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"") + (expired.stderr or b"")  # bytes, even with text=True
        return None, output.decode(errors="replace") if isinstance(output, bytes) else output, out
    return result.returncode, result.stdout + result.stderr, out


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in BENCHMARKS]
)
def test_benchmark_runs_in_quick_mode(tmp_path, name):
    returncode, log, out = quick_run(name, tmp_path)
    assert returncode is not None, f"{name} --quick ran past {TIMEOUT_S} s:\n{log[-3000:]}"
    assert returncode == 0, f"{name} --quick failed:\n{log[-3000:]}"
    for filename in BENCHMARKS[name][1]:
        assert (out / filename).is_file(), f"{name} --quick did not write {filename}"
    payload = json.loads((out / BENCHMARKS[name][1][0]).read_text())
    assert "quick" in json.dumps(payload), f"{name}: the JSON does not say it was a --quick run"


def test_every_benchmark_script_is_covered():
    scripts = {p.stem for p in (REPO_ROOT / "benchmarks").glob("*.py") if p.stem != "__init__"}
    assert scripts == set(BENCHMARKS), "add the new benchmark to BENCHMARKS (every script needs a --quick run)"


def test_no_script_over_400_lines():
    long = {str(p.relative_to(REPO_ROOT)): n for p in (REPO_ROOT / "benchmarks").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}  # fmt: skip
    assert not long, f"split these files: {long}"
