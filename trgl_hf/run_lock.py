"""One run per `output_dir`: a lock file naming the host and process that holds the folder."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = ".trgl-run.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Hold `output_dir` for one run; a second run into the same folder is refused at once.

    A lock left by a dead process on this host is taken over with a warning; a lock of another host cannot be checked
    and is refused with the file to delete.

    Args:
        root (`Path`): the run's `output_dir` (created if needed).
    """

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / LOCK_FILE
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock, or raise a `ValueError` naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(handle, "w") as stream:
                json.dump(me, stream)
            self.held = True
            return self
        raise ValueError(f"Could not lock {self.path.parent}: another run keeps taking it.")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            holder = {}
        host, pid = holder.get("host"), holder.get("pid")
        if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            logger.warning("Taking over %s: the run that held it (pid %s) is gone.", self.path, pid)
            self.path.unlink(missing_ok=True)
            return
        raise ValueError(
            f"{self.path.parent} is in use by another run (host {host}, pid {pid}): wait for it to finish or use "
            f"another `output_dir`. If no run is using it, delete {self.path}."
        )

    def release(self) -> None:
        """Give the folder back."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


__all__ = ["LOCK_FILE", "RunLock"]
