"""Writing files and folders atomically: a process killed mid-write leaves the previous complete version (or none),
never a half-written one; every write point can be hooked by tests to inject faults."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

WRITE_POINT_HOOKS: list = []
"""Callables run with a label at every point where a run changes its folder (tests inject faults here)."""


def write_point(label: str) -> None:
    """Mark a point where the run folder is about to change (a file or folder replaced or removed)."""
    for hook in WRITE_POINT_HOOKS:
        hook(label)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a folder (a write point)."""
    if Path(path).exists():
        write_point(f"remove {Path(path).name}")
        shutil.rmtree(path, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give `path` (and, for a folder, everything inside) the permissions the process umask gives new files:
    temporary files and folders are created private (0600 / 0700) and would otherwise stay so."""
    path, mask = Path(path), _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Write a directory atomically: yield a hidden temporary sibling, then swap it into place.

    A process killed while writing leaves the previous complete `target` (or none) and a hidden `.tmp-*` folder
    that never looks like a checkpoint; it is removed on the next successful write.

    Args:
        target (`str` or `os.PathLike`): the directory to (re)place.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        for path in staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        apply_umask(staging)
        write_point(f"replace {target.name}")
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def link_copy(folder: str | os.PathLike, destination: str | os.PathLike, skip: tuple[str, ...] = ()) -> Path:
    """Copy `folder` to `destination` with hard links (plain copies where links are impossible), leaving out the
    relative paths in `skip`: a snapshot that later rewrites of `folder` cannot change."""
    folder, destination = Path(folder), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for source in sorted(folder.rglob("*")):
        relative = source.relative_to(folder)
        target = destination / relative
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif relative.as_posix() not in skip:
            target.parent.mkdir(parents=True, exist_ok=True)
            link_file(source, target)
    return destination


def link_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Hard-link `source` as `target`, or copy it where the filesystem cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write a JSON file atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2, sort_keys=True)
            stream.flush()
            os.fsync(stream.fileno())
        apply_umask(temporary)
        write_point(f"replace {path.name}")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


__all__ = [
    "WRITE_POINT_HOOKS",
    "apply_umask",
    "atomic_directory",
    "link_copy",
    "link_file",
    "remove_tree",
    "write_json",
    "write_point",
]
