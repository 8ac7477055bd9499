"""Memory budgets that respect the container: `MemAvailable` and the cgroup limits (v1 and v2), read from fake `/proc`
and `/sys/fs/cgroup` trees (a real cgroup: tests/integration/training/test_memory_limits.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trgl_hf.training import memory_limits
from trgl_hf.training.memory_limits import available_memory, available_memory_report, cgroup_memory_limits

MiB, GiB = 1024**2, 1024**3
V1_UNLIMITED = 9223372036854771712  # what cgroup v1 writes for "no limit" on 4 KiB pages


def _proc(root: Path, mem_available: int | None = 8 * GiB, cgroup: str | None = None) -> Path:
    """A fake `/proc` with `meminfo` (MemAvailable in kB) and `self/cgroup`."""
    proc = root / "proc"
    (proc / "self").mkdir(parents=True)
    lines = ["MemTotal:       16000000 kB", "MemFree:         1000000 kB"]
    if mem_available is not None:
        lines.append(f"MemAvailable:   {mem_available // 1024} kB")
    (proc / "meminfo").write_text("\n".join(lines) + "\n")
    if cgroup is not None:
        (proc / "self" / "cgroup").write_text(cgroup)
    return proc


def _group(folder: Path, **files: str | int) -> Path:
    """A fake cgroup folder with the given files (`memory_max` -> `memory.max`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (folder / name.replace("_", ".", 1)).write_text(f"{value}\n")
    return folder


def _v1_cgroup_file(path: str) -> str:
    return f"12:pids:/\n4:memory:{path}\n3:cpu,cpuacct:/\n1:name=systemd:/\n0::/\n"


def _v2_root(root: Path) -> Path:
    """A fake unified (v2-only) hierarchy mounted at `sys/fs/cgroup`."""
    return _group(root / "sys" / "fs" / "cgroup", **{"cgroup_controllers": "cpu io memory pids"})


def test_cgroup_v1_limit_below_mem_available_is_the_budget(tmp_path):
    proc = _proc(tmp_path, cgroup=_v1_cgroup_file("/job-7"))
    cgroups = tmp_path / "sys" / "fs" / "cgroup"
    _group(cgroups / "memory", memory_limit_in_bytes=V1_UNLIMITED, memory_usage_in_bytes=10 * GiB)
    stat = "cache 104857600\ninactive_file 1\ntotal_inactive_file 104857600\n"
    _group(cgroups / "memory" / "job-7", memory_limit_in_bytes=GiB, memory_usage_in_bytes=300 * MiB, memory_stat=stat)
    report = available_memory_report(proc, cgroups)
    assert report.bytes == GiB - 200 * MiB  # inactive file pages count as free, as in MemAvailable
    assert available_memory(proc, cgroups) == report.bytes
    assert "cgroup v1" in report.source and "/job-7" in report.source and "MemAvailable" in report.source


def test_cgroup_v2_limit_below_mem_available_is_the_budget(tmp_path):
    proc = _proc(tmp_path, cgroup="0::/user.slice/job.scope\n")
    cgroups = _v2_root(tmp_path)
    _group(cgroups / "user.slice", memory_max="max", memory_current=2 * GiB)
    _group(cgroups / "user.slice" / "job.scope", memory_max=2 * GiB, memory_current=512 * MiB,
           memory_stat="anon 400000000\ninactive_file 134217728\n")  # fmt: skip
    report = available_memory_report(proc, cgroups)
    assert report.bytes == 2 * GiB - 384 * MiB
    assert "cgroup v2" in report.source and "/user.slice/job.scope" in report.source


@pytest.mark.parametrize("version", [1, 2])
def test_no_limit_leaves_mem_available(tmp_path, version):
    if version == 1:
        proc = _proc(tmp_path, cgroup=_v1_cgroup_file("/job"))
        cgroups = tmp_path / "sys" / "fs" / "cgroup"
        _group(cgroups / "memory" / "job", memory_limit_in_bytes=V1_UNLIMITED, memory_usage_in_bytes=GiB)
    else:
        proc = _proc(tmp_path, cgroup="0::/job\n")
        cgroups = _v2_root(tmp_path)
        _group(cgroups / "job", memory_max="max", memory_current=GiB)
    assert cgroup_memory_limits(proc, cgroups) == []
    assert available_memory_report(proc, cgroups) == memory_limits.AvailableMemory(8 * GiB, "MemAvailable")


def test_a_limit_above_mem_available_leaves_mem_available(tmp_path):
    proc = _proc(tmp_path, mem_available=3 * GiB, cgroup="0::/big\n")
    cgroups = _v2_root(tmp_path)
    _group(cgroups / "big", memory_max=64 * GiB, memory_current=GiB)
    assert [limit.limit for limit in cgroup_memory_limits(proc, cgroups)] == [64 * GiB]  # read, but not the smaller
    assert available_memory_report(proc, cgroups) == memory_limits.AvailableMemory(3 * GiB, "MemAvailable")


@pytest.mark.parametrize("version", [1, 2])
def test_an_ancestor_limit_binds_a_nested_group(tmp_path, version):
    """A parent's limit binds its children: the tightest level of the path wins, whichever it is."""
    path = "/slurm/uid_0/job_42/step_0"
    if version == 1:
        proc = _proc(tmp_path, cgroup=_v1_cgroup_file(path))
        mount = tmp_path / "sys" / "fs" / "cgroup" / "memory"
        names = ("memory_limit_in_bytes", "memory_usage_in_bytes")
    else:
        proc = _proc(tmp_path, cgroup=f"0::{path}\n")
        mount = _v2_root(tmp_path)
        names = ("memory_max", "memory_current")
    unlimited = V1_UNLIMITED if version == 1 else "max"
    _group(mount / "slurm", **dict(zip(names, (unlimited, 20 * GiB))))
    _group(mount / "slurm" / "uid_0", **dict(zip(names, (6 * GiB, 5 * GiB))))  # 1 GiB left for the whole user
    _group(mount / "slurm" / "uid_0" / "job_42", **dict(zip(names, (4 * GiB, 2 * GiB))))  # 2 GiB left
    _group(mount / "slurm" / "uid_0" / "job_42" / "step_0", **dict(zip(names, (unlimited, 2 * GiB))))
    cgroups = mount.parent if version == 1 else mount
    report = available_memory_report(proc, cgroups)
    assert report.bytes == GiB and "/slurm/uid_0 " in report.source, report
    limited = sorted(limit.path for limit in cgroup_memory_limits(proc, cgroups))
    assert limited == ["/slurm/uid_0", "/slurm/uid_0/job_42"]


def test_a_container_without_its_own_cgroup_namespace_reads_its_mounted_root(tmp_path):
    """Docker without a cgroup namespace: `/proc/self/cgroup` says `/docker/<id>`; the mount is the container's
    group."""
    proc = _proc(tmp_path, cgroup=_v1_cgroup_file("/docker/0123abcd"))
    cgroups = tmp_path / "sys" / "fs" / "cgroup"
    _group(cgroups / "memory", memory_limit_in_bytes=512 * MiB, memory_usage_in_bytes=128 * MiB)
    assert available_memory_report(proc, cgroups).bytes == 384 * MiB


def test_a_path_outside_the_cgroup_namespace_never_leaves_the_mount(tmp_path):
    cgroups = _v2_root(tmp_path / "inside")
    _group(cgroups.parent.parent / "outside", memory_max=MiB, memory_current=0)  # mount/../../outside: never read
    _group(cgroups / "outside", memory_max=GiB, memory_current=0)
    assert memory_limits.group_directory(cgroups, "/../../outside") == cgroups / "outside"
    proc = _proc(tmp_path, cgroup="0::/../../outside\n")
    assert available_memory(proc, cgroups) == GiB


def test_hybrid_hierarchies_read_v1_memory_and_unified_v2(tmp_path):
    proc = _proc(tmp_path, cgroup=_v1_cgroup_file("/a").replace("0::/", "0::/b"))
    cgroups = tmp_path / "sys" / "fs" / "cgroup"
    _group(cgroups / "memory" / "a", memory_limit_in_bytes=4 * GiB, memory_usage_in_bytes=GiB)
    _group(cgroups / "unified", cgroup_controllers="")
    _group(cgroups / "unified" / "b", memory_max=2 * GiB, memory_current=GiB)
    assert {limit.version for limit in cgroup_memory_limits(proc, cgroups)} == {1, 2}
    assert available_memory_report(proc, cgroups).bytes == GiB


def test_usage_over_the_limit_leaves_nothing(tmp_path):
    proc = _proc(tmp_path, cgroup="0::/full\n")
    cgroups = _v2_root(tmp_path)
    _group(cgroups / "full", memory_max=GiB, memory_current=GiB + 4096)
    assert available_memory(proc, cgroups) == 0


def test_missing_cgroup_files_leave_mem_available(tmp_path):
    cgroups = tmp_path / "sys" / "fs" / "cgroup"
    no_cgroup_file = _proc(tmp_path / "none")
    assert available_memory_report(no_cgroup_file, cgroups) == memory_limits.AvailableMemory(8 * GiB, "MemAvailable")
    no_mount = _proc(tmp_path / "no-mount", cgroup=_v1_cgroup_file("/job") + "0::/job\n")
    assert available_memory_report(no_mount, cgroups).bytes == 8 * GiB
    _group(cgroups / "memory" / "job", memory_usage_in_bytes=GiB)  # no limit file
    _group(cgroups / "memory" / "other", memory_limit_in_bytes=MiB)  # not this process's group
    assert available_memory_report(no_mount, cgroups).bytes == 8 * GiB
    _group(cgroups / "memory" / "job", memory_limit_in_bytes="garbage")
    assert available_memory_report(no_mount, cgroups).bytes == 8 * GiB


def test_without_mem_available_the_physical_memory_is_the_ceiling(tmp_path):
    proc = _proc(tmp_path, mem_available=None, cgroup="0::/job\n")
    cgroups = _v2_root(tmp_path)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert available_memory_report(proc, cgroups) == memory_limits.AvailableMemory(physical, "the physical memory")
    _group(cgroups / "job", memory_max=MiB, memory_current=0)
    report = available_memory_report(proc, cgroups)
    assert report.bytes == MiB and "below the physical memory" in report.source
