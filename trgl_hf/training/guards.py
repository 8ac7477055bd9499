"""Checks run before any training or writing, so that a mistake costs a clear message and never a run."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..distributed.processes import has_process_group
from ..export.stage_folders import stage_metadata_files
from ..modeling.weight_files import check_weight_folder

logger = logging.getLogger(__name__)

VOLATILE_CONFIG_KEYS = {
    "trained_modules", "transformers_version", "_name_or_path", "architectures", "base_model_name_or_path",
    "id2label", "label2id", "dtype", "torch_dtype", "output_hidden_states", "return_dict", "use_cache",
}  # fmt: skip


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in sorted(value.items()) if k not in VOLATILE_CONFIG_KEYS}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value


TRAINING_FIELDS = ("trgl_mode", "trgl_laps", "num_train_epochs", "max_steps", "learning_rate", "seed",
                   "per_device_train_batch_size", "gradient_accumulation_steps", "optim", "weight_decay",
                   "trgl_prefix_cache_dtype", "trgl_head_lr_multiplier", "trgl_head_warmup_steps")  # fmt: skip
DATA_SAMPLE_ROWS = 64


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _feed(digest: Any, value: Any) -> None:
    """Hash a dataset row's values by content (arrays by bytes, images by pixels), never by object identity."""
    if isinstance(value, dict):
        for key in sorted(value):
            digest.update(str(key).encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            _feed(digest, item)
    elif hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensors
        _feed(digest, value.detach().cpu().numpy())
    elif isinstance(value, np.ndarray):
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(
            np.ascontiguousarray(value).tobytes() if value.dtype != object else repr(value.tolist()).encode()
        )
    elif hasattr(value, "tobytes") and hasattr(value, "size"):  # PIL images
        digest.update(f"{getattr(value, 'mode', '')}{value.size}".encode())
        digest.update(value.tobytes())
    else:
        digest.update(repr(value).encode())


def dataset_fingerprint(dataset: Any) -> dict[str, Any] | None:
    """Size and a content hash of a fixed sample of rows (every column, before any random transform): cheap on
    large datasets, and different for another dataset, another size or other examples in the sample."""
    if dataset is None:
        return None
    try:
        size = len(dataset)
    except TypeError:  # iterable datasets have no length
        return {"rows": None, "type": type(dataset).__name__}
    indices = sorted({int(i) for i in np.linspace(0, size - 1, min(size, DATA_SAMPLE_ROWS))}) if size else []
    digest = hashlib.sha256()
    if hasattr(dataset, "select") and hasattr(dataset, "with_format"):  # datasets.Dataset, without its transform
        rows = dataset.with_format(None).select(indices)
        for row in rows:
            _feed(digest, row)
    else:
        for index in indices:
            _feed(digest, dataset[index])
    return {"rows": size, "sample": digest.hexdigest()[:16]}


def run_identity(model_config: Any, args: Any, phases: list[str], data: dict[str, Any] | None = None) -> dict:
    """What makes two runs the same run, part by part: model cut and objective, phases, training schedule, data.

    Args:
        model_config (`TRGLConfig`): the model's configuration.
        args (`TRGLTrainingArguments`): the training arguments.
        phases (`list[str]`): the names of the run's phases.
        data (`dict`, *optional*): [`dataset_fingerprint`] of each dataset, by name.
    """
    return {
        "model": _digest(_stable(model_config.to_dict())),
        "phases": _digest(phases),
        "training": _digest({name: getattr(args, name) for name in TRAINING_FIELDS}),
        "data": data or {},
    }


def run_fingerprint(model_config: Any, args: Any, phases: list[str], data: dict[str, Any] | None = None) -> str:
    """A short hash of [`run_identity`]."""
    return _digest(run_identity(model_config, args, phases, data))


def describe_difference(recorded: dict[str, Any] | None, current: dict[str, Any]) -> str:
    """Which parts of two run identities differ, in words."""
    if not recorded:
        return "a run written by another version of trgl_hf"
    names = {
        "model": "the model or its TRGLConfig",
        "phases": "the phases (trgl_mode, trgl_laps, num_modules)",
        "training": "the training arguments (epochs, steps, learning rate, seed, batch size, optimizer)",
    }
    parts = [text for key, text in names.items() if recorded.get(key) != current.get(key)]
    for name in sorted(set(recorded.get("data", {})) | set(current.get("data", {}))):
        before, now = recorded.get("data", {}).get(name), current.get("data", {}).get(name)
        if before != now:
            parts.append(f"the `{name}` data ({before} then, {now} now)")
    return "; ".join(parts) or "the fingerprint"


def check_output_dir(root: Path, fingerprint: str, resuming: bool, identity: dict[str, Any] | None = None) -> None:
    """Refuse an `output_dir` that holds the state or stages of a different run.

    Raises:
        `ValueError`: naming what differs and what to change (a new `output_dir`, or the original configuration).
    """
    recorded, recorded_identity = set(), None
    state_path = root / "trgl_state.json"
    if state_path.exists():
        try:
            state = json.loads(state_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{state_path} is corrupted ({error}): delete it or use a new `output_dir`.") from error
        recorded.add(state.get("fingerprint"))
        recorded_identity = state.get("identity")
    for stage_file in stage_metadata_files(root):
        try:
            recorded.add(json.loads(stage_file.read_text()).get("run_fingerprint"))
        except json.JSONDecodeError:
            continue
    recorded.discard(None)
    if recorded and recorded != {fingerprint}:
        difference = describe_difference(recorded_identity, identity or {})
        if resuming:
            raise ValueError(
                f"Cannot resume: {root} holds a run of a different configuration (run {sorted(recorded)}, this one "
                f"is {fingerprint}; what differs: {difference}). Resume with the same model, TRGLConfig, training "
                "arguments and data, or start a new run in a new `output_dir`."
            )
        raise ValueError(
            f"{root} already holds the stages of a different run ({sorted(recorded)}; what differs: {difference}): "
            "use a new `output_dir`, delete the old stages, or pass `resume_from_checkpoint=True` with that run's "
            "configuration."
        )


def check_one_world(args: Any) -> None:
    """Refuse a run whose process group and training arguments disagree on the number of processes (then every rank
    would believe it is the only one, and all of them would write the stages)."""
    import torch.distributed as dist

    if has_process_group() and dist.get_world_size() != args.world_size:
        raise ValueError(
            f"The process group has {dist.get_world_size()} processes but the training arguments see "
            f"{args.world_size} ({args.parallel_mode}): on CPU processes pass `use_cpu=True` (`--use_cpu true`, or "
            "`ACCELERATE_USE_CPU=1`), so that one process writes and gradients are averaged over all of them."
        )


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse an `output_dir` that cannot be created or written (found before anything is trained)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".trgl-write-check-"):
            pass
    except OSError as error:
        raise ValueError(
            f"`output_dir` {folder} cannot be written ({type(error).__name__}: {error}): choose a folder you can "
            "create and write."
        ) from error


def check_hub_credentials(args: Any, api: Any) -> None:
    """With `push_to_hub=True`, refuse to start a run that could not push its stages."""
    if not getattr(args, "push_to_hub", False):
        return
    from huggingface_hub import get_token

    if not (args.hub_token or getattr(api, "token", None) or get_token()):
        raise ValueError(
            "`push_to_hub=True` but no Hugging Face token was found: pass `hub_token=...`, set `HF_TOKEN`, run "
            "`hf auth login`, or set `push_to_hub=False` (stages are still written to `output_dir`)."
        )


def latest_complete_checkpoint(phase_dir: Path) -> Path | None:
    """The newest `checkpoint-N` of a phase that was completely written (trainer state and weights present)."""
    candidates = [p for p in phase_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    for candidate in sorted(candidates, key=lambda p: int(p.name.split("-")[1]), reverse=True):
        if (candidate / "trainer_state.json").exists():
            try:
                check_weight_folder(candidate)
                json.loads((candidate / "trainer_state.json").read_text())
            except (ValueError, json.JSONDecodeError):
                continue
            return candidate
    return None


def finite_metrics(metrics: dict[str, Any], stage: int) -> dict[str, Any]:
    """A stage's metrics with NaN / infinite values replaced by None (and reported as an error in the logs), so that
    no model card shows a non-finite number as if it were a result."""
    clean = {}
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and not math.isfinite(value):
            logger.error("Stage %d: evaluation metric %r is %s (not finite); it is not written into the card.",
                         stage, name, value)  # fmt: skip
            value = None
        clean[name] = value
    return clean
