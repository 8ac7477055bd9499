"""The README's main job: `recipes/train_digits.py` trains, prints every module's accuracy and the memory of its
training step beside the end-to-end step's, and writes loadable stages."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "train_digits.py"


def test_the_main_job_prints_each_modules_memory_beside_end_to_end(tmp_path):
    command = [sys.executable, str(RECIPE), "--depth", "8", "--num_modules", "3", "--num_train_epochs", "1",
               "--output_dir", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    modules, end_to_end = rows[2:5], rows[5]
    assert [row[0].strip() for row in modules] == ["1", "2", "3"] and "end-to-end" in end_to_end[0]
    memory, total = [float(row[4]) for row in modules], float(end_to_end[4])
    assert all(0 < value < total for value in memory), (memory, total)
    assert all(0 <= float(row[2]) <= 1 for row in modules)
    share = re.search(r"Each module trained in at most (\d+)% of the memory an end-to-end step", result.stdout)
    assert share is not None and abs(int(share.group(1)) - 100 * max(memory) / total) < 2
    assert all((tmp_path / "out" / f"stage-{k:02d}" / "config.json").is_file() for k in (1, 2, 3))
