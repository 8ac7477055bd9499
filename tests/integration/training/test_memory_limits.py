"""Memory budgets that respect the container, read (slow tier, as root) by a child process in a real cgroup v1 memory
group (the fake `/proc` and `/sys/fs/cgroup` trees: tests/unit/training/test_memory_limits.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trgl_hf.training import memory_limits

MiB, GiB = 1024**2, 1024**3


_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("memory_limits", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["memory_limits"] = module
spec.loader.exec_module(module)
report = module.available_memory_report()
print(json.dumps({"bytes": report.bytes, "source": report.source}))
"""


@pytest.mark.slow
def test_a_process_in_a_real_cgroup_v1_memory_group_reports_its_limit(memory_cap):
    """As root: a child group of this process's cgroup v1 memory group, limited to 96 MiB; a Python process started
    in it (stdlib only: the module file is loaded alone) reports at most the limit, from the group's own path."""
    limit = 96 * MiB
    with memory_cap(limit) as group:
        mount = Path("/sys/fs/cgroup/memory")
        script = f'echo $$ > {group / "cgroup.procs"} && exec "$0" -c "$1" "$2"'
        module_file = Path(memory_limits.__file__).resolve()
        result = subprocess.run(["sh", "-c", script, sys.executable, _CHILD, str(module_file)], capture_output=True,
                                text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stderr
        report = __import__("json").loads(result.stdout)
        assert 0 < report["bytes"] <= limit, report
        assert report["bytes"] > limit // 4, report  # a bare Python leaves most of 96 MiB free
        assert f"cgroup v1 memory limit of /{group.relative_to(mount).as_posix()}" in report["source"], report
