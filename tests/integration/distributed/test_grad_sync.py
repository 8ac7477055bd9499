"""Gradient averaging over processes: bucketed, started as each module's backward produces its gradients, exactly the
average a plain all-reduce gives, with at most one packed bucket alive at a time."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.multiprocess
def test_bucketed_overlapped_averaging_equals_a_plain_all_reduce(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29613",
               str(ROOT / "tests" / "scripts" / "grad_sync.py"), str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["buckets"] > 3 and record["packed"] >= 1
        assert record["buckets_never_mix_modules"]
        # Module 1's buckets were on the wire before module 2's backward ran; module 2's (one of which holds a
        # parameter no loss reaches) waited for theirs.
        assert all(record["first_module_launched_before_second_backward"])
        assert not any(record["second_module_launched_before_its_backward"])
        assert 0 < record["max_buffer_bytes"] <= record["bucket_bytes"]
        assert record["shared_weight_refused"]
