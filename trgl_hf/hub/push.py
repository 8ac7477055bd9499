"""Pushing the stage checkpoints of a TRGL run to the Hugging Face Hub.

Each `output_dir/stage-XX` folder written by [`TRGLTrainer`] is a complete `save_pretrained` folder. This module
uploads them with [`huggingface_hub.HfApi`], in one of two layouts:

- `"branch"` (default): one branch per stage (`stage-01`, `stage-02`, ...), and the last stage also on `main`, so that
  `from_pretrained(repo_id)` gives the final model and `from_pretrained(repo_id, revision="stage-02")` an earlier one.
- `"subfolder"`: every stage in `stages/stage-XX/` of `main`, loaded with `from_pretrained(repo_id,
  subfolder="stages/stage-02")`.

The model card of each stage is regenerated for the Hub (its load snippet names the repo and the revision or subfolder)
in a temporary copy: the local stage folders are never modified. Every Hub or network failure is raised as a
[`HubPushError`] that says which stage failed and how to retry.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import HfApi
from huggingface_hub.utils import validate_repo_id

from ..export.atomic_files import link_copy
from ..export.model_cards import stage_card_facts, stage_model_card
from ..export.stage_folders import (
    STAGE_CARD_FILE,
    check_stage_folder,
    find_stage_folders,
    has_stage_metadata,
    no_stage_folder_message,
    read_stage_metadata,
    stage_dirname,
)
from ..modeling.tasks import stage_loader

try:  # the HTTP client of huggingface_hub 2.x; its transport errors (connection refused, timeouts) are not OSErrors
    from httpx2 import HTTPError as _TransportError
except ImportError:  # pragma: no cover - older huggingface_hub
    try:
        from httpx import HTTPError as _TransportError
    except ImportError:
        _TransportError = OSError

logger = logging.getLogger(__name__)

STAGES_FOLDER = "stages"
"""Folder of `main` that holds the stages with the `"subfolder"` strategy."""

PUSH_STRATEGIES = ("branch", "subfolder")

# Hub failures: HfHubHTTPError and OfflineModeIsEnabled are OSErrors; httpx2 transport errors are not; a server that
# rejects the model card's metadata or answers malformed JSON gives a ValueError.
_HUB_ERRORS = (OSError, ValueError, _TransportError)


class HubPushError(RuntimeError):
    """A stage (or the final model) of a TRGL run could not be pushed to the Hub.

    The local folder is untouched by a failed push: it stays complete and loadable, and the push can be retried.

    Args:
        stage (`int` or `None`): 1-based stage index, `None` for a folder that is not a stage.
        repo_id (`str`): the target repository.
        target (`str`): the branch or subfolder that was being written, e.g. `"stage-03"` or `"stages/stage-03"`.
        local_dir (`str` or `os.PathLike`): the local folder that was being pushed.
        error (`BaseException`): the underlying error (also chained as `__cause__`).
        retry (`list[str]`, *optional*): calls of `trgl_hf.hub.push` that retry the push; defaults to
            `push_run_stages(<parent of local_dir>, repo_id)`.
    """

    def __init__(
        self,
        stage: int | None,
        repo_id: str,
        target: str,
        local_dir: str | os.PathLike,
        error: BaseException,
        retry: list[str] | None = None,
    ) -> None:
        self.stage = stage
        self.repo_id = repo_id
        self.target = target
        self.local_dir = Path(local_dir)
        self.error = error
        what = f"stage {stage} ({stage_dirname(stage)})" if stage is not None else "the final model"
        if not retry:
            is_run_dir = stage is None and not _is_model_folder(self.local_dir)
            run_dir = self.local_dir if is_run_dir else self.local_dir.parent
            retry = [f"push_run_stages({str(run_dir)!r}, {repo_id!r})"]
        calls = " or ".join(f"`trgl_hf.hub.push.{call}`" for call in retry)
        message = (
            f"Pushing {what} to the Hub repo '{repo_id}' ({target}) failed: {type(error).__name__}: {error}\n"
            f"{_local_state(self.local_dir)} Retry once the Hub is reachable with {calls}: a push replaces the "
            "remote tree, so retrying is safe."
        )
        super().__init__(message)


def stage_branch(stage: int) -> str:
    """Branch that holds stage `stage` with the `"branch"` strategy.

    Args:
        stage (`int`): 1-based stage index.

    Returns:
        `str`: e.g. `"stage-03"`.
    """
    return stage_dirname(stage)


def stage_subfolder(stage: int) -> str:
    """Folder of `main` that holds stage `stage` with the `"subfolder"` strategy.

    Args:
        stage (`int`): 1-based stage index.

    Returns:
        `str`: e.g. `"stages/stage-03"`.
    """
    return f"{STAGES_FOLDER}/{stage_dirname(stage)}"


def push_target(stage: int, strategy: str) -> str:
    """Where [`push_stage`] writes stage `stage`, in the words of [`HubPushError`] and of the end-of-run report.

    Args:
        stage (`int`): 1-based stage index.
        strategy (`str`): `"branch"` or `"subfolder"`.

    Returns:
        `str`: e.g. `"branch 'stage-03'"` or `"subfolder 'stages/stage-03' of main"`.
    """
    if strategy == "branch":
        return f"branch '{stage_branch(stage)}'"
    return f"subfolder '{stage_subfolder(stage)}' of main"


def push_stage(
    stage_dir: str | os.PathLike,
    repo_id: str,
    stage: int | None = None,
    *,
    strategy: Literal["branch", "subfolder"] = "branch",
    api: HfApi | None = None,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
) -> str:
    """Push one stage folder to the Hub, replacing whatever the branch or subfolder held before.

    The repository is created if needed. With the `"branch"` strategy the stage goes to the branch `stage-XX` (created
    from `main` if needed; its whole tree is replaced by the stage folder, except `.gitattributes`). With the
    `"subfolder"` strategy it goes to `stages/stage-XX/` of `main` (only that folder is replaced). The uploaded
    `README.md` is the stage's model card regenerated from `trgl_stage.json`, with a load snippet that names `repo_id`
    and the revision or subfolder; the local folder is not modified.

    Args:
        stage_dir (`str` or `os.PathLike`): a stage folder written by [`TRGLTrainer`], e.g. `output_dir/stage-03`.
        repo_id (`str`): the model repository, e.g. `"username/resnet20-trgl"`.
        stage (`int`, *optional*): 1-based stage index; read from `trgl_stage.json` when omitted.
        strategy (`str`, *optional*, defaults to `"branch"`): `"branch"` or `"subfolder"`.
        api (`HfApi`, *optional*): the client to use; defaults to `HfApi(token=token)`.
        token (`str`, *optional*): a Hub token; defaults to the locally saved one.
        private (`bool`, *optional*): visibility of the repository if it is created.
        commit_message (`str`, *optional*): defaults to `"Upload TRGL stage k/K"`.

    Returns:
        `str`: the branch (`"stage-03"`) or the subfolder (`"stages/stage-03"`) that now holds the stage.

    Raises:
        [`HubPushError`]: if the Hub cannot be reached or rejects a request.
        `FileNotFoundError`: if `stage_dir` is not a complete stage folder.
        `ValueError`: if `strategy`, `repo_id` or `stage` is invalid.

    Example:

    ```python
    from transformers import AutoModelForImageClassification
    from trgl_hf.hub.push import push_stage

    push_stage("out/stage-02", "username/resnet20-trgl", 2)
    model = AutoModelForImageClassification.from_pretrained(
        "username/resnet20-trgl", revision="stage-02", trust_remote_code=True
    )
    ```
    """
    _check_push_target(repo_id, strategy)
    stage_dir = Path(stage_dir)
    stage, num_stages = _stage_and_count(stage_dir, stage)
    branch, subfolder = (stage_branch(stage), None) if strategy == "branch" else (None, stage_subfolder(stage))
    target, retry = push_target(stage, strategy), _stage_retry_calls(stage_dir, repo_id, stage, strategy)
    message = commit_message or f"Upload TRGL stage {stage}/{num_stages}"
    with _hub_copy(stage_dir, repo_id, revision=branch, subfolder=subfolder) as folder:
        with _raised_as_push_error(stage, repo_id, target, stage_dir, retry):
            _replace_remote_tree(api, token, private, repo_id, folder, branch, subfolder, message)
    logger.info("Pushed %s to %s (%s).", stage_dir, repo_id, target)
    return branch or subfolder


def _check_push_target(repo_id: str, strategy: str) -> None:
    """Refuse an invalid repository id, or a push strategy other than `"branch"` and `"subfolder"`."""
    if strategy not in PUSH_STRATEGIES:
        raise ValueError(f"`strategy` must be one of {PUSH_STRATEGIES}, got {strategy!r}.")
    validate_repo_id(repo_id)


def _stage_and_count(stage_dir: Path, stage: int | None) -> tuple[int, int]:
    """`(stage, num_stages)` of a complete stage folder; `stage`, when given, must be the one it holds."""
    metadata = check_stage_folder(stage_dir)
    if stage is not None and int(metadata["stage"]) != stage:
        raise ValueError(f"{stage_dir} holds stage {metadata['stage']}, not stage {stage}.")
    return int(metadata["stage"]), int(metadata["num_stages"])


def _stage_retry_calls(stage_dir: Path, repo_id: str, stage: int, strategy: str) -> list[str]:
    """The calls a [`HubPushError`] of [`push_stage`] offers to retry with."""
    return [
        f"push_run_stages({str(stage_dir.parent)!r}, {repo_id!r}, strategy={strategy!r})",
        f"push_stage({str(stage_dir)!r}, {repo_id!r}, {stage}, strategy={strategy!r})",
    ]


def _replace_remote_tree(
    api: HfApi | None,
    token: str | None,
    private: bool | None,
    repo_id: str,
    folder: Path,
    branch: str | None,
    subfolder: str | None,
    message: str,
) -> None:
    """Make the branch (created from `main` if needed) or the subfolder of `main` of `repo_id` (created if needed)
    hold exactly `folder`; `api` defaults to `HfApi(token=token)`."""
    api = api if api is not None else HfApi(token=token)
    api.create_repo(repo_id, token=token, private=private, exist_ok=True)
    if branch is not None:
        api.create_branch(repo_id, branch=branch, token=token, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        path_in_repo=subfolder,
        revision=branch,
        commit_message=message,
        token=token,
        # Matched against the remote files of the branch (or of `subfolder`); the files being uploaded are
        # dropped from the deletions, and `.gitattributes` is always kept, so this replaces the tree.
        delete_patterns="*",
    )


@contextmanager
def _raised_as_push_error(
    stage: int | None, repo_id: str, target: str, local_dir: Path, retry: list[str] | None = None
) -> Iterator[None]:
    """Raise a Hub or network failure inside the block as a [`HubPushError`] naming the stage and how to retry."""
    try:
        yield
    except _HUB_ERRORS as error:
        raise HubPushError(stage, repo_id, target, local_dir, error, retry=retry) from error


def push_final(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    api: HfApi | None = None,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
) -> str:
    """Push a model folder to `main`, so that `from_pretrained(repo_id)` loads it.

    Files of `main` that the folder does not have are deleted, except `.gitattributes` and the `stages/` folder of the
    `"subfolder"` strategy. When `model_dir` is a TRGL stage folder, its model card is regenerated with a load snippet
    that names `repo_id` (in a temporary copy; the local folder is not modified); any other folder is uploaded as is.

    Args:
        model_dir (`str` or `os.PathLike`): a `save_pretrained` folder, e.g. the last `output_dir/stage-XX`.
        repo_id (`str`): the model repository.
        api (`HfApi`, *optional*): the client to use; defaults to `HfApi(token=token)`.
        token (`str`, *optional*): a Hub token; defaults to the locally saved one.
        private (`bool`, *optional*): visibility of the repository if it is created.
        commit_message (`str`, *optional*): defaults to `"Upload final TRGL model"`.

    Returns:
        `str`: the revision written, `"main"`.

    Raises:
        [`HubPushError`]: if the Hub cannot be reached or rejects a request.
        `FileNotFoundError`: if `model_dir` is not a folder.

    Example:

    ```python
    from trgl_hf.hub.push import push_final

    push_final("out/stage-04", "username/resnet20-trgl")
    ```
    """
    validate_repo_id(repo_id)
    model_dir = Path(model_dir)
    stage = _stage_of_model_folder(model_dir)
    retry = _final_retry_calls(model_dir, repo_id, stage)
    api = api if api is not None else HfApi(token=token)
    with _hub_copy(model_dir, repo_id, revision=None, subfolder=None) as folder:
        with _raised_as_push_error(stage, repo_id, "branch 'main'", model_dir, retry):
            api.create_repo(repo_id, token=token, private=private, exist_ok=True)
            stale = _stale_main_files(api, repo_id, token)
            message = commit_message or "Upload final TRGL model"
            api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=message, token=token, delete_patterns=stale or None
            )
    logger.info("Pushed %s to %s (main).", model_dir, repo_id)
    return "main"


def _stage_of_model_folder(model_dir: Path) -> int | None:
    """The stage a folder to push to `main` holds (it must then be complete), None for a folder that is no stage."""
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is not a folder.")
    return int(check_stage_folder(model_dir)["stage"]) if has_stage_metadata(model_dir) else None


def _final_retry_calls(model_dir: Path, repo_id: str, stage: int | None) -> list[str]:
    """The calls a [`HubPushError`] of [`push_final`] offers to retry with."""
    retry = [f"push_final({str(model_dir)!r}, {repo_id!r})"]
    if stage is not None:
        retry.insert(0, f"push_run_stages({str(model_dir.parent)!r}, {repo_id!r})")
    return retry


def _stale_main_files(api: HfApi, repo_id: str, token: str | None) -> list[str]:
    """Patterns of the files of `main` a final push deletes: all but `.gitattributes` and the `stages/` folder."""
    remote = api.list_repo_files(repo_id, revision="main", token=token)
    return [
        glob.escape(path) for path in remote if path != ".gitattributes" and not path.startswith(f"{STAGES_FOLDER}/")
    ]


def push_run_card(
    files: list[str | os.PathLike],
    repo_id: str,
    *,
    api: HfApi | None = None,
    token: str | None = None,
) -> str:
    """Upload a run's card (`README.md` and the per-module plot written by [`TRGLTrainer`]) to the root of `main`.

    Used with the `"subfolder"` strategy, where `main` holds `stages/stage-XX/` and the run card is its front page.
    Other files of `main` are kept.

    Args:
        files (`list`): the card's files (uploaded under their own names).
        repo_id (`str`): the model repository.
        api (`HfApi`, *optional*): the client to use; defaults to `HfApi(token=token)`.
        token (`str`, *optional*): a Hub token.

    Returns:
        `str`: `"main"`.
    """
    validate_repo_id(repo_id)
    api = api if api is not None else HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="trgl-card-") as folder:
        for path in map(Path, files):
            shutil.copy2(path, Path(folder) / path.name)
        with _raised_as_push_error(None, repo_id, "README.md of main", Path(files[0]).parent):
            api.create_repo(repo_id, token=token, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload TRGL run card", token=token)
    return "main"


def push_run_stages(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    strategy: Literal["branch", "subfolder"] = "branch",
    api: HfApi | None = None,
    token: str | None = None,
    private: bool | None = None,
) -> dict[int, str]:
    """Push every complete stage folder of a run, and with the `"branch"` strategy the last stage also to `main`.

    Pushing again (e.g. after a [`HubPushError`]) is safe: each push replaces the remote tree of its branch or
    subfolder, and unchanged files are not committed again.

    Args:
        output_dir (`str` or `os.PathLike`): the `output_dir` of a finished [`TRGLTrainer`] run, holding `stage-01`,
            `stage-02`, ...
        repo_id (`str`): the model repository, e.g. `"username/resnet20-trgl"`.
        strategy (`str`, *optional*, defaults to `"branch"`): `"branch"` (one branch per stage, the last stage also
            on `main`) or `"subfolder"` (`stages/stage-XX/` on `main`).
        api (`HfApi`, *optional*): the client to use; defaults to `HfApi(token=token)`.
        token (`str`, *optional*): a Hub token; defaults to the locally saved one.
        private (`bool`, *optional*): visibility of the repository if it is created.

    Returns:
        `dict[int, str]`: the branch or subfolder of each pushed stage, e.g. `{1: "stage-01", 2: "stage-02"}`.

    Raises:
        [`HubPushError`]: at the first stage that cannot be pushed; the stages before it are on the Hub.
        `FileNotFoundError`: if `output_dir` holds no complete stage folder.

    Example:

    ```python
    from transformers import AutoModelForImageClassification
    from trgl_hf.hub.push import push_run_stages

    revisions = push_run_stages("out", "username/resnet20-trgl")  # {1: "stage-01", 2: "stage-02", ...}
    final = AutoModelForImageClassification.from_pretrained("username/resnet20-trgl", trust_remote_code=True)
    first = AutoModelForImageClassification.from_pretrained(
        "username/resnet20-trgl", revision=revisions[1], trust_remote_code=True
    )
    ```
    """
    _check_push_target(repo_id, strategy)
    stages = find_stage_folders(output_dir)
    if not stages:
        raise FileNotFoundError(no_stage_folder_message(output_dir))
    api = api if api is not None else HfApi(token=token)
    pushed = {}
    for stage, folder in stages.items():
        pushed[stage] = push_stage(folder, repo_id, stage, strategy=strategy, api=api, token=token, private=private)
    if strategy == "branch":
        _push_last_stage_to_main(stages, repo_id, api=api, token=token, private=private)
    return pushed


def _push_last_stage_to_main(stages: dict[int, Path], repo_id: str, **push_options: Any) -> None:
    """Push the last stage found to `main` as well (with a warning when the run has more stages to come)."""
    last = max(stages)
    num_stages = int(read_stage_metadata(stages[last])["num_stages"])
    if last != num_stages:
        logger.warning("The run is not finished (stage %d of %d): `main` gets stage %d.", last, num_stages, last)
    push_final(stages[last], repo_id, **push_options)


@contextmanager
def _hub_copy(folder: Path, repo_id: str, revision: str | None, subfolder: str | None) -> Iterator[Path]:
    """A temporary copy of `folder` whose model card names `repo_id` and `revision` or `subfolder`.

    Files are hard-linked where possible (copied otherwise) and only `README.md` is written anew, so the original
    folder is never modified. A folder without `trgl_stage.json` is yielded as is.
    """
    if not has_stage_metadata(folder):
        yield folder
        return
    card = stage_model_card(stage_card_facts(folder), repo_id, revision=revision, subfolder=subfolder)
    with tempfile.TemporaryDirectory(prefix="trgl-hub-") as temporary:
        copy = link_copy(folder, Path(temporary) / folder.name, skip=(STAGE_CARD_FILE,))
        card.save(copy / STAGE_CARD_FILE)
        yield copy


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _local_state(folder: Path) -> str:
    """What is on disk and how to load it, for a [`HubPushError`] message."""
    if not _is_model_folder(folder):
        return f"Nothing local is affected: the run's stages stay in {folder}."
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    loader = stage_loader((config.get("architectures") or [""])[0])[0]
    remote = ", trust_remote_code=True" if config.get("auto_map") else ""
    return f"The local folder {folder} is intact: load it with `{loader}.from_pretrained({str(folder)!r}{remote})`."


# find_stage_folders and read_stage_metadata are trgl_hf.export.stage_folders' own, still offered here as before.
__all__ = [
    "HubPushError",
    "PUSH_STRATEGIES",
    "find_stage_folders",
    "push_final",
    "push_run_card",
    "push_run_stages",
    "push_stage",
    "push_target",
    "read_stage_metadata",
    "stage_branch",
    "stage_subfolder",
]
