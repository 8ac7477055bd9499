"""Pushing the stages of a running training to the Hub in the background, so that the Hub never costs a run.

[`TRGLTrainer`] hands every stage to a [`BackgroundPusher`] as soon as the stage folder is written: the folder is
snapshotted (hard links, so a later rewrite of the stage cannot race with the upload) and uploaded by one daemon
worker thread, in order, while training goes on (`hub_strategy="every_save"`), or only once training is over
(`hub_strategy="end"`). A failed push is retried with backoff; nothing is ever raised into training.

[`BackgroundPusher.finish`] (at the end of `train()`) waits for the pushes at most `trgl_hub_finish_timeout` seconds:
then no new attempt starts, the pushes not started are dropped, and an upload still running is left to its daemon
thread (huggingface_hub has no timeout: it may hang forever, but cannot keep the process alive; if it completes, it
writes the same files a retry writes). What is not pushed is logged with the calls that push it again, and returned.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi

from ..export.atomic_files import link_copy
from ..export.stage_folders import stage_dirname
from .push import HubPushError, push_final, push_run_card, push_stage, push_target

logger = logging.getLogger(__name__)

RETRY_DELAYS_S = (10.0, 60.0, 300.0)
"""Seconds to wait before each new attempt of a failed push (after huggingface_hub's own retries of 5xx answers)."""

TRAINER_RETRY_CALL = "trainer.push_to_hub()"
"""The call that pushes a run again from the session that trained it (the report also gives one for any process)."""


def sleep(seconds: float, stop: threading.Event) -> bool:
    """Wait `seconds` before a new attempt, or less if `stop` is set meanwhile; return whether it was set.

    A module function so that tests can replace it.
    """
    return stop.wait(seconds)


@dataclass(eq=False)
class _Push:
    """One upload and its state: its name in reports (`"stage-02"`, `"main"`, `"run card"`), the stage, where it
    goes, the local folder named in errors, the call that makes it, and the folder of the snapshot that call reads."""

    name: str
    stage: int | None
    target: str
    folder: Path
    job: Callable[[], str]
    scratch: Path
    attempts: int = 0
    result: str | None = None
    error: HubPushError | None = None


class BackgroundPusher:
    """Uploads stage folders of a run to one Hub repository from a daemon worker thread, in submission order.

    Args:
        output_dir (`str` or `os.PathLike`): the run's `output_dir` (named in the retry call of a report).
        repo_id (`str`): the target repository.
        strategy (`str`): the layout, `"branch"` or `"subfolder"` (see [`push_stage`]).
        api (`HfApi`, *optional*): the client; defaults to `HfApi(token=token)`.
        token (`str`, *optional*): a Hub token.
        private (`bool`, *optional*): visibility of the repository if it is created.
        retry_delays (`tuple[float, ...]`, *optional*): waits before the 2nd, 3rd, ... attempt of a failed push;
            defaults to [`RETRY_DELAYS_S`].
        push_at_end (`bool`, *optional*, defaults to `False`): hold every submitted push until [`finish`]
            (`hub_strategy="end"`) instead of starting it at once (`"every_save"`).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        repo_id: str,
        strategy: str,
        api: HfApi | None = None,
        token: str | None = None,
        private: bool | None = None,
        retry_delays: tuple[float, ...] | None = None,
        push_at_end: bool = False,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.repo_id, self.strategy = repo_id, strategy
        self.api = api if api is not None else HfApi(token=token)
        self.token, self.private = token, private
        self.retry_delays = tuple(RETRY_DELAYS_S if retry_delays is None else retry_delays)
        self.push_at_end = push_at_end
        self.pushed: dict[str, str] = {}
        self._pushes: list[_Push] = []  # every push, in submission order
        self._held: list[_Push] = []
        self._queue: queue.SimpleQueue[_Push | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._scratch = Path(tempfile.mkdtemp(prefix="trgl-push-"))
        self._worker = threading.Thread(target=self._work, name="trgl-hub-push", daemon=True)
        self._worker.start()

    @property
    def retry_call(self) -> str:
        """The call that pushes the whole run again from any process (safe to repeat: unchanged files are not
        committed)."""
        return f"trgl_hf.hub.push.{self._retry_args()}"

    def _retry_args(self) -> str:
        return f"push_run_stages({str(self.output_dir)!r}, {self.repo_id!r}, strategy={self.strategy!r})"

    def submit_stage(self, stage: int, folder: Path, final: bool) -> None:
        """Queue stage `stage` (and, with the `"branch"` strategy and `final`, the same folder for `main`)."""
        kwargs = dict(api=self.api, token=self.token, private=self.private)
        scratch, strategy = self._snapshot(folder), self.strategy
        job = functools.partial(push_stage, scratch / folder.name, self.repo_id, stage, strategy=strategy, **kwargs)
        self._submit(_Push(stage_dirname(stage), stage, push_target(stage, self.strategy), folder, job, scratch))
        if final and self.strategy == "branch":
            scratch = self._snapshot(folder)  # its own: either push may end while the other still reads
            job = functools.partial(push_final, scratch / folder.name, self.repo_id, **kwargs)
            self._submit(_Push("main", stage, "branch 'main'", folder, job, scratch))

    def submit_run_card(self, files: list[Path]) -> None:
        """Queue the run's card (README and plot) for the root of `main` (the `"subfolder"` layout's front page)."""
        folder = Path(tempfile.mkdtemp(prefix="run-card-", dir=self._scratch))
        copies = [Path(shutil.copy2(path, folder / path.name)) for path in files]
        job = functools.partial(push_run_card, copies, self.repo_id, api=self.api, token=self.token)
        self._submit(_Push("run card", None, "README.md of main", self.output_dir, job, folder))

    @property
    def held_pushes(self) -> int:
        """How many pushes wait for `finish()` to start them (`hub_strategy="end"`)."""
        return len(self._held)

    def finish(self, timeout: float | None = None) -> list[HubPushError]:
        """Start the held pushes, wait for all pushes at most `timeout` seconds, then log and return what is not
        pushed.

        Args:
            timeout (`float`, *optional*): the bound on the wait (`trgl_hub_finish_timeout`); `None` waits for every
                push and all its retries. When it runs out, no new attempt starts, the pushes not started are
                dropped and an upload still running is left to the daemon worker.

        Returns:
            `list[HubPushError]`: one per push not done (its last error, or a `TimeoutError` for one still running or
            never started), in submission order; calling `trainer.push_to_hub()` pushes them all again.
        """
        for push in self._held:
            self._queue.put(push)
        self._held.clear()
        self._queue.put(None)  # the worker exits once everything before it is done
        self._worker.join(timeout)
        if self._worker.is_alive():
            self._stop.set()
            self._drop_queued()
        left = self._left()
        errors = [push.error or self._timed_out(push, timeout) for push in left]
        if left:
            self._report(left, errors)
        return errors

    def _snapshot(self, folder: Path) -> Path:
        """A new scratch folder holding a hard-link copy of `folder` under the same name."""
        scratch = Path(tempfile.mkdtemp(prefix=f"{folder.name}-", dir=self._scratch))
        link_copy(folder, scratch / folder.name)
        return scratch

    def _submit(self, push: _Push) -> None:
        with self._lock:
            self._pushes.append(push)
        if self.push_at_end:
            self._held.append(push)
        else:
            self._queue.put(push)

    def _work(self) -> None:
        """The worker thread: run the queued pushes in order until [`finish`]'s end mark or its bound."""
        while not self._stop.is_set():
            push = self._queue.get()
            if push is None:
                break
            self._run(push)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _run(self, push: _Push) -> None:
        """Try `push`, and while it fails, again after each of `retry_delays`, unless the bound runs out first."""
        try:
            for delay in (0.0, *self.retry_delays):
                if delay:
                    logger.warning("Retrying the push of %s to %s in %.0f s.", push.name, self.repo_id, delay)
                    if sleep(delay, self._stop):
                        return
                if self._stop.is_set():
                    return
                push.attempts += 1
                try:
                    target = push.job()
                except HubPushError as error:
                    push.error = self._error(push, error.error)
                    logger.warning("Push %d of %s failed: %s", push.attempts, push.name, error.error)
                    continue
                except Exception as error:  # not the Hub's doing (a damaged folder): retrying cannot help
                    push.error = self._error(push, error)
                    logger.error("The push of %s failed: %r", push.name, error)
                    return
                self._succeeded(push, target)
                return
        finally:
            shutil.rmtree(push.scratch, ignore_errors=True)

    def _succeeded(self, push: _Push, target: str) -> None:
        with self._lock:
            push.result = target
            self.pushed[push.name] = target
        if self._stop.is_set():  # the same files a retry writes: the Hub holds the stage either way
            logger.info("The push of %s to %s, still running when `train()` returned, completed.", push.name, target)

    def _drop_queued(self) -> None:
        """The bound ran out: remove the snapshots of the pushes that never started (they stay not pushed)."""
        while True:
            try:
                push = self._queue.get_nowait()
            except queue.Empty:
                break
            if push is not None:
                shutil.rmtree(push.scratch, ignore_errors=True)
        self._queue.put(None)

    def _left(self) -> list[_Push]:
        """The latest push of every name, where it is not done."""
        with self._lock:
            latest = {push.name: push for push in self._pushes}
            return [push for push in latest.values() if push.result is None]

    def _error(self, push: _Push, error: BaseException) -> HubPushError:
        return HubPushError(push.stage, self.repo_id, push.target, push.folder, error, retry=[self._retry_args()])

    def _timed_out(self, push: _Push, timeout: float | None) -> HubPushError:
        state = "still uploading" if push.attempts else "not started"
        bound = f"the {timeout:g} s" if timeout is not None else "the time"
        message = f"{state} when {bound} that `train()` waits for the Hub ran out (`trgl_hub_finish_timeout`)"
        return self._error(push, TimeoutError(message))

    def _report(self, left: list[_Push], errors: list[HubPushError]) -> None:
        lines = [
            f"  {push.name} ({push.target}): "
            + (f"{push.attempts} failed attempt(s), last: " if push.error is not None else "")
            + f"{type(error.error).__name__}: {error.error}"
            for push, error in zip(left, errors)
        ]
        logger.error(
            "Training finished, but %d push(es) to the Hub repo %s did not complete (the local stages in %s are "
            "complete):\n%s\nPush them again with `%s`, or from any process with:\n    %s",
            len(left), self.repo_id, self.output_dir, "\n".join(lines), TRAINER_RETRY_CALL, self.retry_call,
        )  # fmt: skip


__all__ = ["BackgroundPusher", "RETRY_DELAYS_S", "TRAINER_RETRY_CALL"]
