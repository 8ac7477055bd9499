"""The stage-folder format, owned here and nowhere else: a run's `output_dir/stage-XX` folders (their names and how
to parse them), the `trgl_stage.json` each holds (writing, reading), what makes one complete, and the checksums that
tell an intact stage from a damaged one.

A stage folder is a `save_pretrained` folder (config, weights, remote code if any, the processor) plus
`trgl_stage.json` (the stage index, the number of stages and the run's facts and metrics) and a model card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .atomic_files import write_json

logger = logging.getLogger(__name__)

STAGE_METADATA_FILE = "trgl_stage.json"
"""The file of a stage folder that says which stage it is and what the run recorded about it."""

STAGE_CARD_FILE = "README.md"
"""The model card of a stage folder (regenerated for the Hub; loading never reads it)."""

STAGE_FOLDER_PATTERN = re.compile(r"^stage-(\d+)$")
"""Names of stage folders: `stage-01`, `stage-02`, ... (hidden `.stage-XX.tmp-*` folders of a write do not match)."""

UNCHECKED_STAGE_FILES = (STAGE_CARD_FILE,)
"""Files of a stage folder left out of its checksums: the model card, which loading does not read (and a user may
edit)."""

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def stage_dirname(stage: int) -> str:
    """Folder name of stage `stage` (1-based): `stage-01`, `stage-02`, ..."""
    return f"stage-{stage:02d}"


def stage_folder(output_dir: str | os.PathLike, stage: int) -> Path:
    """The folder of stage `stage` in a run's `output_dir`: `output_dir/stage-XX`."""
    return Path(output_dir) / stage_dirname(stage)


def stage_of_dirname(name: str) -> int | None:
    """The stage a folder name stands for (`"stage-03"` -> 3), or None for any other name."""
    match = STAGE_FOLDER_PATTERN.match(name)
    return int(match.group(1)) if match else None


def stage_metadata_files(output_dir: str | os.PathLike) -> Iterator[Path]:
    """The `trgl_stage.json` files of the `stage-*` folders of `output_dir`, complete or not."""
    return Path(output_dir).glob(f"stage-*/{STAGE_METADATA_FILE}")


def has_stage_metadata(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a `trgl_stage.json` (a stage folder, as opposed to any `save_pretrained` folder)."""
    return (Path(folder) / STAGE_METADATA_FILE).is_file()


def write_stage_metadata(folder: str | os.PathLike, stage: int, num_stages: int, facts: dict[str, Any]) -> None:
    """Write `trgl_stage.json` in `folder`: the stage index, the number of stages K and the run's `facts`."""
    write_json(Path(folder) / STAGE_METADATA_FILE, {"stage": stage, "num_stages": num_stages, **facts})


def read_stage_metadata(stage_dir: str | os.PathLike) -> dict[str, Any]:
    """The run facts and metrics that [`save_stage`] wrote to `trgl_stage.json` in a stage folder.

    Args:
        stage_dir (`str` or `os.PathLike`): a stage folder, e.g. `output_dir/stage-02`.

    Returns:
        `dict`: with keys `stage`, `num_stages`, `base_model`, `dataset`, `trgl_mode`, `taus`, `use_transport` and
        `metrics`.

    Raises:
        `FileNotFoundError`: if the folder has no `trgl_stage.json`.
    """
    path = Path(stage_dir) / STAGE_METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{stage_dir} is not a TRGL stage folder: {STAGE_METADATA_FILE} is missing.")
    with open(path, encoding="utf-8") as stream:
        return json.load(stream)


def check_stage_folder(stage_dir: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a complete stage folder (config, weights and `trgl_stage.json` naming its stage), or an error.

    Raises:
        `FileNotFoundError`: naming the missing folder or file.
        `ValueError`: if `trgl_stage.json` does not say which stage of how many it is.
    """
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        raise FileNotFoundError(f"{stage_dir} is not a folder.")
    metadata = read_stage_metadata(stage_dir)
    if not (stage_dir / "config.json").is_file():
        raise FileNotFoundError(f"{stage_dir} has no config.json.")
    if not any((stage_dir / name).is_file() for name in _WEIGHT_FILES):
        raise FileNotFoundError(f"{stage_dir} has no model.safetensors.")
    if "stage" not in metadata or "num_stages" not in metadata:
        raise ValueError(f"{stage_dir / STAGE_METADATA_FILE} has no `stage` or `num_stages`.")
    return metadata


def find_stage_folders(output_dir: str | os.PathLike) -> dict[int, Path]:
    """The complete stage folders of a run, by stage index.

    Hidden temporary folders (`.stage-XX.tmp-*`) of an interrupted write are ignored, and so are folders without
    `config.json`, weights or `trgl_stage.json` (logged as a warning).

    Args:
        output_dir (`str` or `os.PathLike`): the `output_dir` of a [`TRGLTrainer`] run.

    Returns:
        `dict[int, Path]`: `{1: output_dir/stage-01, ...}`, sorted by stage.
    """
    found = {}
    for path in sorted(Path(output_dir).iterdir()):
        stage = stage_of_dirname(path.name)
        if stage is not None and path.is_dir() and _is_complete_stage(path, stage):
            found[stage] = path
    return dict(sorted(found.items()))


def _is_complete_stage(path: Path, stage: int) -> bool:
    """Whether `path` is a complete folder of stage `stage` (a warning says why not)."""
    try:
        metadata = check_stage_folder(path)
        if int(metadata["stage"]) != stage:
            raise ValueError(f"its {STAGE_METADATA_FILE} is for stage {metadata['stage']}")
    except (FileNotFoundError, ValueError) as error:
        logger.warning("Skipping incomplete stage folder %s: %s", path, error)
        return False
    return True


def no_stage_folder_message(output_dir: str | os.PathLike) -> str:
    """What to say when `output_dir` holds no complete stage folder."""
    return f"No complete stage folder ({stage_dirname(1)}, {stage_dirname(2)}, ...) in {output_dir}."


def file_checksum(path: Path) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stage_checksums(directory: Path) -> dict[str, str]:
    """Checksums of every file of a stage folder that loading it needs, by path relative to it: weights, configs,
    the remote-code modeling files (`*.py`), the processor's files, `trgl_stage.json` and a PEFT adapter's folder;
    everything but [`UNCHECKED_STAGE_FILES`]."""
    files = [path for path in sorted(Path(directory).rglob("*")) if path.is_file()]
    relative = {path.relative_to(directory).as_posix(): path for path in files}
    return {name: file_checksum(path) for name, path in relative.items() if name not in UNCHECKED_STAGE_FILES}


def stage_intact(directory: Path, recorded: dict[str, str]) -> bool:
    """Whether every file recorded for a stage is still in `directory` with its recorded checksum (files added to the
    folder since are not the stage's and are ignored)."""
    for name, checksum in recorded.items():
        path = Path(directory) / name
        if not path.is_file() or file_checksum(path) != checksum:
            return False
    return bool(recorded)


__all__ = [
    "STAGE_CARD_FILE",
    "STAGE_FOLDER_PATTERN",
    "STAGE_METADATA_FILE",
    "UNCHECKED_STAGE_FILES",
    "check_stage_folder",
    "file_checksum",
    "find_stage_folders",
    "has_stage_metadata",
    "no_stage_folder_message",
    "read_stage_metadata",
    "stage_checksums",
    "stage_dirname",
    "stage_folder",
    "stage_intact",
    "stage_metadata_files",
    "stage_of_dirname",
    "write_stage_metadata",
]
