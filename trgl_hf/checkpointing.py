"""Writing stage folders and run state to disk atomically, with model cards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from transformers import PreTrainedModel

from .tasks import get_task, stage_loader

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


def stage_model_card(stage: int, num_stages: int, info: dict[str, Any], model: PreTrainedModel) -> ModelCard:
    """Model card of one stage: what it is, its metrics, and how to load it.

    Args:
        stage (`int`): 1-based stage index.
        num_stages (`int`): number of modules K of the run.
        info (`dict`): run facts (`base_model`, `dataset`, `trgl_mode`, `taus`, `use_transport`, `metrics`,
            `module_table`, `repo_id`, `revision`, `subfolder`).
        model (`PreTrainedModel`): the exported stage model.
    """
    metrics = info.get("metrics") or {}
    remote = bool(getattr(model.config, "auto_map", None))
    loader, pipeline_tag = stage_loader(type(model).__name__)
    task = getattr(model.config, "problem_type", None) or (
        "causal_lm" if pipeline_tag == "text-generation" else "single_label_classification"
    )
    location = info.get("repo_id") or f"path/to/{stage_dirname(stage)}"
    extra = []
    if info.get("revision"):
        extra.append(f'revision="{info["revision"]}"')
    if info.get("subfolder"):
        extra.append(f'subfolder="{info["subfolder"]}"')
    if remote:
        extra.append("trust_remote_code=True")
    arguments = ", ".join([f'"{location}"', *extra])
    card_data = ModelCardData(
        library_name="transformers",
        base_model=info.get("base_model") or None,
        datasets=[info["dataset"]] if info.get("dataset") else None,
        metrics=[get_task(task).selection_metric],
        pipeline_tag=pipeline_tag,
        tags=["trgl", "greedy-module-wise-training", "trgl_hf", stage_dirname(stage)],
    )
    metric_lines = (
        "\n".join(
            f"| {name} | {value:.4f} |" if isinstance(value, (int, float)) else f"| {name} | not finite |"
            for name, value in sorted(metrics.items())
        )
        or "| - | - |"
    )
    table = info.get("module_table") or ""
    content = f"""---
{card_data.to_yaml()}
---

# Stage {stage} of {num_stages} of a TRGL run

Modules 1..{stage} of a network cut into {num_stages} modules and trained module-wise with
[TRGL](https://arxiv.org/abs/2309.17357) (transport-regularised greedy learning) by `trgl_hf`, followed by the
auxiliary head of module {stage}: a standalone `{type(model).__name__}`.

- base model: `{info.get("base_model") or "built from a config"}`
- dataset: `{info.get("dataset") or "not recorded"}`
- mode: `{info.get("trgl_mode")}`, modules K = {num_stages}, transport term: `{info.get("use_transport")}`,
  tau per module: `{info.get("taus")}`

## Metrics of this stage

| metric | value |
| --- | --- |
{metric_lines}

{table}

## Load it

```python
from transformers import {loader}
model = {loader}.from_pretrained({arguments})
```
"""
    return ModelCard(content)


def save_stage(
    model: PreTrainedModel, directory: str | os.PathLike, stage: int, num_stages: int, info: dict[str, Any]
) -> Path:
    """Save an exported stage (weights, config, remote code if any, model card, metrics) atomically.

    Args:
        model (`PreTrainedModel`): the stage model from [`TRGLModel.export_stage`].
        directory (`str` or `os.PathLike`): destination folder, e.g. `output_dir/stage-02`.
        stage (`int`): 1-based stage index.
        num_stages (`int`): number of modules K.
        info (`dict`): run facts for the model card (see [`stage_model_card`]).

    Returns:
        `Path`: the written folder.
    """
    with atomic_directory(directory) as staging:
        model.save_pretrained(staging)
        stage_model_card(stage, num_stages, info, model).save(staging / "README.md")
        write_json(
            staging / STAGE_METADATA_FILE,
            {"stage": stage, "num_stages": num_stages, **info},
        )
    return Path(directory)
