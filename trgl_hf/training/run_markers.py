"""`output_dir/checkpoint-N`: where `transformers.trainer_utils.get_last_checkpoint` finds a TRGL run to resume.

A TRGL run keeps its Trainer checkpoints per phase (`phases/<phase>/checkpoint-*`) and its finished phases as progress
folders, so the example scripts' resume idiom (`get_last_checkpoint(output_dir)`, then
`train(resume_from_checkpoint=last_checkpoint)`) would find nothing. The run therefore keeps one folder at its root,
named by the run's global step at its latest resumable point: a hard-link copy of that point (the phase's Trainer
checkpoint, or the progress folder of a finished phase: the whole TRGL model, so what `on_save` integrations upload
from `output_dir/checkpoint-{global_step}` holds the weights), plus `trgl_checkpoint.json`; passing it to
`train(resume_from_checkpoint=...)` resumes the run from its latest resumable point, as `True` does. Hard links cost
no storage while the source exists (files are copied where the filesystem has none).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..export.atomic_files import atomic_directory, link_copy, remove_tree, write_json

MARKER_FILE = "trgl_checkpoint.json"
MARKER_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def write_marker(root: str | Path, global_step: int, fingerprint: str, point: str, source: Path | None = None) -> Path:
    """Write `root/checkpoint-{global_step}` (atomically): a hard-link copy of `source` and the marker record naming
    the run and its resumable point; then remove the older markers.

    Args:
        root (`str` or `Path`): the run's `output_dir`.
        global_step (`int`): the run's step at that point.
        fingerprint (`str`): the run's fingerprint (a marker resumes only the run that wrote it).
        point (`str`): what can be resumed, e.g. `"phases/module-02/checkpoint-4"` or `"module-02 finished"`.
        source (`Path`, *optional*): the folder of that point, copied in with hard links.
    """
    root = Path(root)
    target = root / f"checkpoint-{global_step}"
    with atomic_directory(target) as staging:
        if source is not None:
            link_copy(source, staging)
        write_json(staging / MARKER_FILE, {"run_fingerprint": fingerprint, "global_step": global_step, "point": point})
    for folder in root.iterdir():
        if folder != target and MARKER_PATTERN.match(folder.name) and (folder / MARKER_FILE).is_file():
            remove_tree(folder)
    return target


def read_marker(path: str | Path) -> dict[str, Any] | None:
    """The marker's record when `path` is a run's root `checkpoint-N` marker; None for any other folder."""
    marker = Path(path) / MARKER_FILE
    if not marker.is_file():
        return None
    return json.loads(marker.read_text())


def check_marker(path: str | Path, fingerprint: str) -> None:
    """Refuse a marker written by a run of another configuration.

    Raises:
        `ValueError`: naming both fingerprints and what to do.
    """
    recorded = (read_marker(path) or {}).get("run_fingerprint")
    if recorded != fingerprint:
        raise ValueError(
            f"{path} marks a run of another configuration ({recorded}, this one is {fingerprint}): resume it with "
            "that run's model, configuration, arguments and data, or start a new `output_dir`."
        )


__all__ = ["MARKER_FILE", "check_marker", "read_marker", "write_marker"]
