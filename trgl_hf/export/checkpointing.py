"""Writing stage folders and run state to disk atomically, with model cards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from .model_cards import stage_card_facts, stage_model_card

STAGE_METADATA_FILE = "trgl_stage.json"


def stage_dirname(stage: int) -> str:
    """Folder name of stage `stage` (1-based): `stage-01`, `stage-02`, ..."""
    return f"stage-{stage:02d}"


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


def save_stage(
    model: PreTrainedModel,
    directory: str | os.PathLike,
    stage: int,
    num_stages: int,
    info: dict[str, Any],
    processor: Any = None,
    write_extra: Callable[[Path], dict[str, Any]] | None = None,
) -> Path:
    """Save an exported stage atomically: weights, config (and generation config), remote code if any, the processor
    the model was trained with, `trgl_stage.json` and the model card: the files `Trainer.save_model` writes, plus the
    run facts.

    Args:
        model (`PreTrainedModel`): the stage model from [`TRGLModel.export_stage`].
        directory (`str` or `os.PathLike`): destination folder, e.g. `output_dir/stage-02`.
        stage (`int`): 1-based stage index.
        num_stages (`int`): number of modules K.
        info (`dict`): run facts for `trgl_stage.json` and the model card (see [`stage_model_card`]).
        processor (*optional*): the tokenizer, image processor, feature extractor or processor given to the trainer
            as `processing_class`; saved with its own `save_pretrained`.
        write_extra (*optional*): called with the staging folder to write more files (e.g. the PEFT adapter); what
            it returns is added to `trgl_stage.json`.

    Returns:
        `Path`: the written folder.
    """
    with atomic_directory(directory) as staging:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        extra = write_extra(staging) if write_extra is not None else {}
        write_json(staging / STAGE_METADATA_FILE, {"stage": stage, "num_stages": num_stages, **info, **extra})
        stage_model_card(stage_card_facts(staging), str(directory)).save(staging / "README.md")
    return Path(directory)
