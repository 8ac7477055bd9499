"""The weight files of a saved model folder, and the check that they are there and readable (run before loading a
whole TRGL model, and before resuming from a progress folder)."""

from __future__ import annotations

import os
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


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


__all__ = ["WEIGHT_FILES", "check_weight_folder"]
