"""Checks run before any training or writing, so that a mistake costs a clear message and never a run."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .checkpointing import STAGE_METADATA_FILE

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
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


def run_fingerprint(model_config: Any, args: Any, phases: list[str]) -> str:
    """A short hash of everything that makes two runs the same run (model cut, objective, schedule, data order).

    Args:
        model_config (`TRGLConfig`): the model's configuration.
        args (`TRGLTrainingArguments`): the training arguments.
        phases (`list[str]`): the names of the run's phases.
    """
    settings = {
        "model": _stable(model_config.to_dict()),
        "phases": phases,
        "training": {
            name: getattr(args, name)
            for name in (
                "trgl_mode",
                "trgl_laps",
                "num_train_epochs",
                "max_steps",
                "learning_rate",
                "seed",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "optim",
                "weight_decay",
            )
        },  # fmt: skip
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_output_dir(root: Path, fingerprint: str, resuming: bool) -> None:
    """Refuse an `output_dir` that holds the state or stages of a different run.

    Raises:
        `ValueError`: naming what to change (a new `output_dir`, or the original configuration to resume).
    """
    recorded = set()
    state_path = root / "trgl_state.json"
    if state_path.exists():
        try:
            recorded.add(json.loads(state_path.read_text()).get("fingerprint"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{state_path} is corrupted ({error}): delete it or use a new `output_dir`.") from error
    for stage_file in root.glob(f"stage-*/{STAGE_METADATA_FILE}"):
        try:
            recorded.add(json.loads(stage_file.read_text()).get("run_fingerprint"))
        except json.JSONDecodeError:
            continue
    recorded.discard(None)
    if recorded and recorded != {fingerprint}:
        if resuming:
            raise ValueError(
                f"Cannot resume: {root} holds a checkpoint of a different configuration (run {sorted(recorded)}, "
                f"this one is {fingerprint}). Resume with the same model, TRGLConfig and training arguments, or "
                "start a new run in a new `output_dir`."
            )
        raise ValueError(
            f"{root} already holds the stages of a different run ({sorted(recorded)}): use a new `output_dir`, "
            "delete the old stages, or pass `resume_from_checkpoint=True` with that run's configuration."
        )


def check_sequence_lengths(dataset: Any, model: Any, name: str) -> None:
    """Refuse token datasets with rows longer than the base model's position embeddings."""
    if dataset is None or "input_ids" not in (getattr(dataset, "column_names", None) or []):
        return
    config = model.backbone.config
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not limit or getattr(config, "position_embedding_type", "absolute") not in ("absolute", None):
        return
    rows = dataset.with_format(None)["input_ids"]
    longest = max((len(row) for row in rows), default=0)
    if longest > limit:
        raise ValueError(
            f"`{name}` has sequences of {longest} tokens but the model has only {limit} positions: truncate the "
            f"inputs (e.g. `tokenizer(..., truncation=True, max_length={limit})`) or use shorter blocks."
        )


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


def check_weight_folder(folder: str | os.PathLike) -> None:
    """Refuse a local checkpoint folder whose weights are missing or unreadable, naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    present = [folder / name for name in WEIGHT_FILES if (folder / name).exists()]
    if not present:
        raise ValueError(
            f"{folder} has no weights ({' or '.join(WEIGHT_FILES)}): the save was interrupted or the file was "
            "removed. Save the model again, or resume the run that wrote it."
        )
    if present[0].name == "model.safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(present[0]), framework="pt") as handle:
                for key in handle.keys():
                    handle.get_slice(key)
        except Exception as error:
            raise ValueError(
                f"{present[0]} is corrupted ({type(error).__name__}: {error}): save the model again, or resume "
                "the run that wrote it."
            ) from error


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
