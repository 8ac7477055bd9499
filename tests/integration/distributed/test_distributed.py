"""Two CPU processes launched without extra flags: one world (one writer), and BatchNorm statistics kept identical
across ranks the way DDP's `broadcast_buffers` keeps them (rank 0's), in the prefix cache and in the saved stages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.multiprocess
def test_batchnorm_statistics_follow_rank_zero_and_one_process_writes(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "0", "--num_machines", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(launcher + [str(ROOT / "tests" / "scripts" / "ddp_buffers.py"), str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = sorted(tmp_path.glob("*-rank0.pt"))
    assert len(records) >= 6  # 3 phases begin, 3 evaluations
    for record in records:
        rank0 = torch.load(record)
        rank1 = torch.load(Path(str(record).replace("rank0", "rank1")))
        assert rank0.keys() == rank1.keys()
        for name in rank0:
            torch.testing.assert_close(rank1[name], rank0[name], msg=f"{record.name}: {name}")
    running = [name for name in torch.load(records[0]) if name.endswith("running_mean")]
    assert running, "the model has BatchNorm statistics"
    last_evaluation = torch.load(sorted(tmp_path.glob("evaluate-*-rank0.pt"))[-1])
    stage = load_file(tmp_path / "run" / "stage-03" / "model.safetensors")
    compared = 0
    for name, value in stage.items():
        if name.endswith(("running_mean", "running_var")):
            source = "backbone." + name.split(".", 1)[1] if not name.startswith("head") else None
            if source in last_evaluation:
                torch.testing.assert_close(value, last_evaluation[source], msg=name)
                compared += 1
    assert compared > 0
    assert not list((tmp_path / "run").glob("**/.*.tmp-*"))  # one writer: no half-written folders left behind


@pytest.mark.multiprocess
def test_two_processes_build_one_shared_prefix_cache(tmp_path):
    import json

    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "0", "--num_machines", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(launcher + [str(ROOT / "tests" / "scripts" / "shared_cache.py"), str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for phase in ("module-02", "module-03"):
        records = [json.loads((tmp_path / f"{phase}-rank{rank}.json").read_text()) for rank in (0, 1)]
        assert records[0] == records[1]  # both processes map the same files
        rows = records[0]["rows"]
        by_rank = {rank: sum(n for name, n in rows.items() if name.startswith(f"rank-00{rank}")) for rank in (0, 1)}
        assert by_rank == {0: 50, 1: 50} and records[0]["length"] == 100 and records[0]["on_disk"]
        cache = torch.load(tmp_path / f"{phase}-cache.pt")
        torch.testing.assert_close(cache["shared"], cache["alone"], rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "run" / ".trgl-prefix-cache").exists()  # removed when the run ends


@pytest.mark.multiprocess
def test_two_processes_share_a_stream_as_accelerate_shards_it(tmp_path):
    import json

    from trgl_hf import load_digits_dataset

    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", "0", "--num_machines", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(launcher + [str(ROOT / "tests" / "scripts" / "streaming_ranks.py"), str(tmp_path)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [json.loads((tmp_path / f"seen-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [[s["phase"] for s in ranks] for ranks in seen] == [["module-01"] * 2 + ["module-02"] * 2 +
                                                               ["module-03"] * 2] * 2  # fmt: skip
    stream = load_digits_dataset()["train"].select(range(256)).with_format("torch")
    known = {round(float(row["pixel_values"].double().sum()), 6) for row in stream}
    for step in range(6):
        first, second = seen[0][step]["rows"], seen[1][step]["rows"]
        assert len(first) == len(second) == 8
        assert set(first) <= known and set(second) <= known  # real rows of the stream, no cached or padded rows
        assert not set(first) & set(second), f"step {step}: both processes trained on the same rows"
