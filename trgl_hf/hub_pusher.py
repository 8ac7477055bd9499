"""Pushing the stages of a running training to the Hub in the background, so that the Hub never costs a run.

[`TRGLTrainer`] hands every stage to a [`BackgroundPusher`] as soon as the stage folder is written: the folder is
snapshotted (hard links, so a later rewrite of the stage cannot race with the upload) and uploaded by one worker
thread, in order, while training goes on. A failed push is retried with backoff; what still fails is collected, never
raised into training, and reported by [`BackgroundPusher.finish`] with the one call that pushes it again.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from .checkpointing import link_copy, stage_dirname
from .hub import HubPushError, push_final, push_run_card, push_stage

logger = logging.getLogger(__name__)

RETRY_DELAYS_S = (10.0, 60.0, 300.0)
"""Seconds to wait before each new attempt of a failed push (after huggingface_hub's own retries of 5xx answers)."""


def sleep(seconds: float) -> None:
    """Wait between attempts (a module function so that tests can replace it)."""
    time.sleep(seconds)


class BackgroundPusher:
    """Uploads stage folders of a run to one Hub repository from a worker thread, in submission order.

    Args:
        output_dir (`str` or `os.PathLike`): the run's `output_dir` (named in the retry call of a report).
        repo_id (`str`): the target repository.
        strategy (`str`): `"branch"` or `"subfolder"` (see [`push_stage`]).
        api (`HfApi`, *optional*): the client; defaults to `HfApi(token=token)`.
        token (`str`, *optional*): a Hub token.
        private (`bool`, *optional*): visibility of the repository if it is created.
        retry_delays (`tuple[float, ...]`, *optional*): waits before the 2nd, 3rd, ... attempt of a failed push.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        repo_id: str,
        strategy: str,
        api: HfApi | None = None,
        token: str | None = None,
        private: bool | None = None,
        retry_delays: tuple[float, ...] = RETRY_DELAYS_S,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.repo_id, self.strategy = repo_id, strategy
        self.api = api if api is not None else HfApi(token=token)
        self.token, self.private, self.retry_delays = token, private, retry_delays
        self.pushed: dict[str, str] = {}
        self.failures: dict[str, HubPushError] = {}
        self._lock = threading.Lock()
        self._futures: list[Future] = []
        self._scratch = Path(tempfile.mkdtemp(prefix="trgl-push-"))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trgl-hub-push")

    @property
    def retry_call(self) -> str:
        """The call that pushes the whole run again (safe to repeat: unchanged files are not committed)."""
        return f"trgl_hf.hub.push_run_stages({str(self.output_dir)!r}, {self.repo_id!r}, strategy={self.strategy!r})"

    def submit_stage(self, stage: int, folder: Path, final: bool) -> None:
        """Queue stage `stage` (and, with the `"branch"` strategy and `final`, the same folder for `main`)."""
        copy = link_copy(folder, Path(tempfile.mkdtemp(prefix=f"{folder.name}-", dir=self._scratch)) / folder.name)
        kwargs = dict(api=self.api, token=self.token, private=self.private)
        strategy = self.strategy
        jobs = [(stage_dirname(stage), lambda: push_stage(copy, self.repo_id, stage, strategy=strategy, **kwargs))]
        if final and self.strategy == "branch":
            jobs.append(("main", lambda: push_final(copy, self.repo_id, **kwargs)))
        for name, job in jobs:
            self._futures.append(self._executor.submit(self._attempt, name, stage, folder, job))
        self._futures.append(self._executor.submit(shutil.rmtree, copy.parent, True))

    def submit_run_card(self, files: list[Path]) -> None:
        """Queue the run's card (README and plot) for the root of `main` (the `"subfolder"` layout's front page)."""
        folder = Path(tempfile.mkdtemp(prefix="run-card-", dir=self._scratch))
        copies = [shutil.copy2(path, folder / path.name) for path in files]
        job = lambda: push_run_card(copies, self.repo_id, api=self.api, token=self.token)  # noqa: E731
        self._futures.append(self._executor.submit(self._attempt, "run card", None, self.output_dir, job))

    def _attempt(self, name: str, stage: int | None, folder: Path, job: Any) -> None:
        for attempt, delay in enumerate((0.0, *self.retry_delays)):
            if delay:
                logger.warning("Retrying the push of %s to %s in %.0f s.", name, self.repo_id, delay)
                sleep(delay)
            try:
                target = job()
            except HubPushError as error:
                failure = HubPushError(stage, self.repo_id, error.target, folder, error.error, retry=[self.retry_call])
                logger.warning("Push %d of %s failed: %s", attempt + 1, name, error.error)
                continue
            with self._lock:
                self.pushed[name] = target
                self.failures.pop(name, None)
            return
        with self._lock:
            self.failures[name] = failure

    def finish(self) -> list[HubPushError]:
        """Wait for every queued push; log and return the ones that failed after all attempts."""
        for future in self._futures:
            future.result()
        self._futures.clear()
        self._executor.shutdown(wait=True)
        shutil.rmtree(self._scratch, ignore_errors=True)
        failures = list(self.failures.values())
        if failures:
            names = ", ".join(self.failures)
            logger.error(
                "Training finished, but pushing %s to the Hub repo %s failed after %d attempts each (the local "
                "stages in %s are complete). Push them again with:\n    %s\nLast error: %s",
                names, self.repo_id, 1 + len(self.retry_delays), self.output_dir, self.retry_call, failures[-1].error,
            )  # fmt: skip
        return failures


__all__ = ["BackgroundPusher", "RETRY_DELAYS_S"]
