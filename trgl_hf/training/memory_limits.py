"""How much memory this process may still allocate: the machine's `MemAvailable`, or less where its control group
(a container, a Slurm job, a systemd unit) has a memory limit.

A process in a cgroup with a limit is killed when the group's usage reaches it, whatever `/proc/meminfo` says of the
machine, so every automatic memory budget of the library reads both and takes the smaller. Both cgroup versions are
read: v1 (`memory.limit_in_bytes` / `memory.usage_in_bytes` in the memory controller's hierarchy) and v2
(`memory.max` / `memory.current` in the unified hierarchy), at the process's group and at every ancestor up to the
mounted root (a parent's limit binds its children too). What a group may still take is its limit less its usage,
where the usage's inactive file pages (`inactive_file` in `memory.stat`: page cache the kernel reclaims before it
kills anything) count as free, as `MemAvailable` counts them.

The roots (`/proc`, `/sys/fs/cgroup`) are parameters so that a fake tree can stand for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PROC_ROOT = Path("/proc")
"""Where `meminfo` and `self/cgroup` are read when no root is given."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where the cgroup hierarchies are mounted when no root is given: v1 controllers in subfolders (`memory/`), v2 at
the root itself (unified) or in `unified/` (hybrid)."""
UNLIMITED = 2**62
"""cgroup v1 writes "no limit" as the largest page-aligned 63-bit number; any limit at least this large is none."""
_V1 = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
_V2 = ("memory.max", "memory.current", "inactive_file")


@dataclass(frozen=True)
class AvailableMemory:
    """Bytes this process may still allocate, and where the number came from.

    Args:
        bytes (`int`): the smaller of `MemAvailable` and what the tightest cgroup limit leaves.
        source (`str`): a phrase for logs, e.g. `"MemAvailable"` or `"the cgroup v1 memory limit of /job (1.0 GiB,
            0.3 GiB in use)"`.
    """

    bytes: int
    source: str


@dataclass(frozen=True)
class CgroupLimit:
    """The memory limit of one cgroup (the process's or an ancestor's) and what it leaves.

    Args:
        version (`int`): 1 or 2.
        path (`str`): the group's path in its hierarchy, e.g. `"/system.slice/job.scope"`.
        limit (`int`): `memory.limit_in_bytes` (v1) or `memory.max` (v2).
        usage (`int`): `memory.usage_in_bytes` (v1) or `memory.current` (v2), less the inactive file pages.
    """

    version: int
    path: str
    limit: int
    usage: int

    @property
    def available(self) -> int:
        """Bytes the group may still take before its limit (never below 0)."""
        return max(self.limit - self.usage, 0)

    def describe(self) -> str:
        """The limit in words, for logs."""
        return (
            f"the cgroup v{self.version} memory limit of {self.path} ({_gib(self.limit)}, {_gib(self.usage)} in use)"
        )


def available_memory(proc_root: str | Path | None = None, cgroup_root: str | Path | None = None) -> int:
    """Bytes this process may still allocate: the smaller of `MemAvailable` and what the cgroup limits leave.

    Args:
        proc_root (`str` or `Path`, *optional*): stands for `/proc` (default [`PROC_ROOT`]).
        cgroup_root (`str` or `Path`, *optional*): stands for `/sys/fs/cgroup` (default [`CGROUP_ROOT`]).
    """
    return available_memory_report(proc_root, cgroup_root).bytes


def available_memory_report(
    proc_root: str | Path | None = None, cgroup_root: str | Path | None = None
) -> AvailableMemory:
    """[`available_memory`] with where the number came from (for logs).

    `MemAvailable` of `proc_root/meminfo` (the physical memory where it cannot be read), lowered to what the tightest
    limit of the process's cgroups leaves (v1 and v2, the process's group and its ancestors). Missing or unreadable
    cgroup files count as no limit.

    Args:
        proc_root (`str` or `Path`, *optional*): stands for `/proc` (default [`PROC_ROOT`]).
        cgroup_root (`str` or `Path`, *optional*): stands for `/sys/fs/cgroup` (default [`CGROUP_ROOT`]).
    """
    proc_root = Path(proc_root if proc_root is not None else PROC_ROOT)
    cgroup_root = Path(cgroup_root if cgroup_root is not None else CGROUP_ROOT)
    machine = meminfo_available(proc_root)
    if machine is None:
        machine, source = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "the physical memory"
    else:
        source = "MemAvailable"
    tightest = min(cgroup_memory_limits(proc_root, cgroup_root), key=lambda limit: limit.available, default=None)
    if tightest is None or tightest.available >= machine:
        return AvailableMemory(machine, source)
    return AvailableMemory(tightest.available, f"{tightest.describe()}, below {source} ({_gib(machine)})")


def meminfo_available(proc_root: str | Path) -> int | None:
    """`MemAvailable` of `proc_root/meminfo` in bytes, `None` where it cannot be read."""
    try:
        with open(Path(proc_root) / "meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_memory_limits(proc_root: str | Path, cgroup_root: str | Path) -> list[CgroupLimit]:
    """The memory limits of the process's cgroups (v1 and v2) and of their ancestors; groups without a limit, or
    whose files cannot be read, are left out.

    Args:
        proc_root (`str` or `Path`): stands for `/proc` (`self/cgroup` is read).
        cgroup_root (`str` or `Path`): stands for `/sys/fs/cgroup`.
    """
    cgroup_root = Path(cgroup_root)
    limits = []
    for version, path in cgroup_memberships(proc_root):
        if version == 1:
            mounts = [cgroup_root / "memory"]
        else:  # unified (v2 only) at the root itself; hybrid (v1 controllers + v2) in `unified/`
            mounts = [cgroup_root, cgroup_root / "unified"]
        for mount in mounts:
            group = group_directory(mount, path)
            if group is None or (version == 2 and not (mount / "cgroup.controllers").is_file()):
                continue
            for level in _up_to(group, mount):
                limit = _read_limit(level, version, "/" + "/".join(level.relative_to(mount).parts))
                if limit is not None:
                    limits.append(limit)
            break
    return limits


def cgroup_memberships(proc_root: str | Path) -> list[tuple[int, str]]:
    """The process's memory cgroups from `proc_root/self/cgroup`: `(1, path)` for the v1 memory controller's
    hierarchy, `(2, path)` for the unified (v2) hierarchy; empty where the file cannot be read."""
    try:
        text = (Path(proc_root) / "self" / "cgroup").read_text(encoding="utf-8")
    except OSError:
        return []
    memberships = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path.startswith("/"):
            continue
        if "memory" in controllers.split(","):
            memberships.append((1, path))
        elif hierarchy == "0" and controllers == "":
            memberships.append((2, path))
    return memberships


def group_directory(mount: Path, path: str) -> Path | None:
    """The folder of the cgroup `path` under the hierarchy mounted at `mount`, `None` where `mount` is not there.

    A container without its own cgroup namespace sees its host path (`/docker/<id>`) in `/proc/self/cgroup` but has
    its own group mounted as the root: the path's leading parts are dropped until a folder exists (at worst the
    mount itself). A path outside the process's cgroup namespace (`/../x`) never leads outside the mount.
    """
    if not mount.is_dir():
        return None
    parts = PurePosixPath(path).parts[1:]
    if ".." in parts:  # a group outside this process's cgroup namespace: never look outside the mount
        parts = parts[len(parts) - parts[::-1].index("..") :]
    for start in range(len(parts)):
        candidate = mount.joinpath(*parts[start:])
        if candidate.is_dir():
            return candidate
    return mount


def _up_to(group: Path, mount: Path) -> Iterator[Path]:
    """`group`, its parent, ... up to `mount` (included)."""
    yield group
    while group != mount:
        group = group.parent
        yield group


def _read_limit(folder: Path, version: int, path: str) -> CgroupLimit | None:
    """The limit of the group in `folder`, `None` where it has none or its limit cannot be read."""
    limit_file, usage_file, inactive_key = _V1 if version == 1 else _V2
    limit = _read_number(folder / limit_file)
    if limit is None or limit >= UNLIMITED:
        return None
    usage = _read_number(folder / usage_file) or 0
    inactive = _read_stat(folder / "memory.stat", inactive_key)
    if inactive is None and version == 1:
        inactive = _read_stat(folder / "memory.stat", "inactive_file")
    return CgroupLimit(version, path, limit, max(usage - (inactive or 0), 0))


def _read_number(file: Path) -> int | None:
    """The integer in `file`; `None` for `"max"` (no limit), a missing or unreadable file."""
    try:
        return int(file.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _read_stat(file: Path, key: str) -> int | None:
    """The value of `key` in a `memory.stat` file, `None` where it is not there."""
    try:
        for line in file.read_text(encoding="ascii").splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def _gib(size: int) -> str:
    """`size` bytes in GiB, or MiB under 1 GiB."""
    return f"{size / 1024**3:.2f} GiB" if size >= 1024**3 else f"{size / 1024**2:.1f} MiB"


__all__ = [
    "AvailableMemory",
    "CgroupLimit",
    "available_memory",
    "available_memory_report",
    "cgroup_memberships",
    "cgroup_memory_limits",
    "group_directory",
    "meminfo_available",
]
