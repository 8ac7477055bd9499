"""One run per `output_dir`: a lock file naming the host and process that holds the folder.

The lock file appears with its owner's record already in it: the record is written to a temporary file, then
hard-linked as the lock (`os.link` fails when the lock exists, so two runs never both take it). Where the filesystem
has no hard links, the lock is created exclusively and then written; a run killed in between leaves an empty lock.
A lock whose record is empty or unreadable (such a torn lock, or one left by an older trgl_hf) names no owner that
could still be alive once it is older than `TORN_LOCK_GRACE_S` (a live run writes its record within microseconds):
it is taken over, with a warning. A younger one is waited for, then judged again. Takeovers are serialised by an
advisory `flock` on `.trgl-run.lock.guard` (released by the kernel if its holder dies); under it the lock is removed
only if it still holds exactly the record judged stale (every live record carries its run's unique token), so a run
that took the folder meanwhile keeps it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ..export.atomic_files import apply_umask

logger = logging.getLogger(__name__)

LOCK_FILE = ".trgl-run.lock"
TORN_LOCK_GRACE_S = 10.0
"""Age after which a lock file with no readable owner record is a killed run's, not one being written."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(text: str) -> dict[str, Any] | None:
    """The owner record of a lock file's text, or None when it names no host and pid (empty, cut short, garbage)."""
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int) or "host" not in holder:
        return None
    return holder


@contextlib.contextmanager
def _takeover_guard(path: Path):
    """Hold an exclusive advisory lock on `path` (created if needed); a no-op where `fcntl` does not exist."""
    try:
        import fcntl
    except ImportError:  # not POSIX: takeovers are not serialised
        yield
        return
    handle = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the flock


class RunLock:
    """Hold `output_dir` for one run; a second run into the same folder is refused at once.

    A lock left by a dead process on this host, or a torn lock (empty or unreadable owner record) older than
    `grace` seconds, is taken over with a warning; a lock of a live process, or of another host (which cannot be
    checked), is refused with the file to delete.

    Args:
        root (`Path`): the run's `output_dir` (created if needed).
        grace (`float`, *optional*, defaults to `TORN_LOCK_GRACE_S`): age in seconds after which a torn lock is stale.
    """

    def __init__(self, root: str | os.PathLike, grace: float = TORN_LOCK_GRACE_S):
        self.path = Path(root) / LOCK_FILE
        self.grace = grace
        self.held = False
        self.token = uuid.uuid4().hex

    def acquire(self) -> RunLock:
        """Take the lock, or raise a `ValueError` naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "token": self.token}
        for _ in range(4):
            if self._create(json.dumps(me)):
                self.held = True
                return self
            self._take_over_if_stale()
        raise ValueError(f"Could not lock {self.path.parent}: another run keeps taking it.")

    def _create(self, record: str) -> bool:
        """Create the lock file holding `record` in one step; False when it exists."""
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f"{LOCK_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as stream:
                stream.write(record)
                stream.flush()
                os.fsync(stream.fileno())
            apply_umask(temporary)
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this filesystem
                return self._create_exclusive(record)
            return True
        finally:
            Path(temporary).unlink(missing_ok=True)

    def _create_exclusive(self, record: str) -> bool:
        """Create the lock file exclusively, then write `record` (a kill in between leaves a torn lock)."""
        try:
            handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(handle, "w") as stream:
            stream.write(record)
            stream.flush()
            os.fsync(stream.fileno())
        return True

    def _take_over_if_stale(self) -> None:
        """Remove the lock when its owner cannot be alive (waiting out the grace of a young torn lock), else raise."""
        try:
            seen = self.path.stat()
            text = self.path.read_text()
        except FileNotFoundError:
            return  # released meanwhile: try again
        except OSError as error:
            raise ValueError(f"{self.path} exists but cannot be read ({error}): another run may hold "
                             f"{self.path.parent}. If no run is using it, delete {self.path}.") from error  # fmt: skip
        holder = _owner(text)
        if holder is None:
            age = time.time() - seen.st_mtime
            if age < self.grace:  # maybe a live run between creating the lock and writing it: judge again later
                time.sleep(self.grace - age)
                return
            self._remove(text, f"it names no owner ({'empty' if not text else 'unreadable'}) and is {age:.0f} s "
                               "old: a run killed while taking it")  # fmt: skip
            return
        host, pid = holder.get("host"), holder.get("pid")
        if host == socket.gethostname() and not _alive(pid):
            self._remove(text, f"the run that held it (pid {pid}) is gone")
            return
        raise ValueError(
            f"{self.path.parent} is in use by another run (host {host}, pid {pid}): wait for it to finish or use "
            f"another `output_dir`. If no run is using it, delete {self.path}."
        )

    def _remove(self, stale: str, reason: str) -> None:
        """Remove the lock if it still holds the record `stale` judged so (one takeover at a time; a torn record must
        still be older than the grace: a run creating its lock without hard links writes it a moment later)."""
        with _takeover_guard(self.path.with_name(f"{LOCK_FILE}.guard")):
            try:
                current, modified = self.path.read_text(), self.path.stat().st_mtime
            except FileNotFoundError:
                return  # another run took it over and released it meanwhile: try again
            if current != stale or (_owner(current) is None and time.time() - modified < self.grace):
                return  # another run's lock now
            logger.warning("Taking over %s: %s.", self.path, reason)
            self.path.unlink()

    def release(self) -> None:
        """Give the folder back (the lock file is removed only while it still names this run)."""
        if not self.held:
            return
        self.held = False
        try:
            holder = _owner(self.path.read_text())
        except OSError:
            holder = None
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        else:
            logger.warning("%s no longer names this run: left in place.", self.path)


__all__ = ["LOCK_FILE", "TORN_LOCK_GRACE_S", "RunLock"]
