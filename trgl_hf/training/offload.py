"""`trgl_offload`: where the modules a phase does not train live (`"disk"`: in their module files, mapped).

See `trgl_hf.export.module_files` for the files and what mapping a module means.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..export.module_files import (
    FileMappings,
    lap_state_filename,
    module_filename,
    module_tensors,
    read_module_folder,
    save_tensors,
)

OFFLOAD_CHOICES = ("auto", "disk", "none")
OFFLOAD_DIR = ".trgl-offload"


def offload_decision(
    choice: str, mode: str, device_type: str, several_processes: bool, fsdp: bool
) -> tuple[bool, str]:
    """Whether a run offloads its inactive modules to disk, and why.

    `"auto"` offloads wherever `"disk"` is possible: the values are bit-identical, the files are the progress the run
    writes anyway, and a frozen module costs memory only while a forward reads it.

    Raises:
        `ValueError`: `"disk"` where it cannot apply, naming what to change.
    """
    obstacle = None
    if mode == "parallel":
        obstacle = "in parallel mode every module trains at every step, so none can leave memory (sequential can)"
    elif fsdp:
        obstacle = "with FSDP each process holds only a shard of every module already"
    elif several_processes:
        obstacle = "with several processes every process would map files only the main process writes"
    elif device_type != "cpu":
        obstacle = f"the run trains on {device_type!r}; offloading from an accelerator is not implemented"
    if obstacle is None:
        return choice != "none", "inactive modules live in their module files" if choice != "none" else "disabled"
    if choice == "disk":
        raise ValueError(f"`trgl_offload='disk'` cannot apply: {obstacle}. Use `trgl_offload='auto'` or 'none'.")
    return False, obstacle


def into_memory(tensors: Any) -> None:
    """Give each tensor a private in-memory copy of its values (a mapped one leaves its file)."""
    for tensor in tensors:
        tensor.data = tensor.data.clone()


class ModuleOffload:
    """`trgl_offload="disk"`: every module the current phase does not train lives in a module file, mapped; the
    trained ones are in memory.

    At the start of a run, the inactive modules that are not in a file yet (a base built in memory) are written once to
    `folder`; after each phase every module but the next phase's is mapped to the progress folder the phase wrote (its
    trained modules' new files, the others' linked ones). Values never change: a mapped module holds exactly the bytes
    it had.

    Args:
        folder (`Path`): where the modules of the base that are in memory are written at the start.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def start(self, model: Any, trained: set[int]) -> None:
        """Before the first phase, which trains `trained`: map every other module, writing first what of it is in
        memory (the tensors of a base loaded with `from_pretrained` already live in its checkpoint's files); copy
        `trained` into memory where it is in a file."""
        mappings = FileMappings()
        for index, tensors in module_tensors(model).items():
            held = {key for key, tensor in tensors.items() if mappings.holds(tensor)}
            if index in trained:
                into_memory(tensors[key] for key in held)
            elif index is not None and set(tensors) - held:  # e.g. a base built in memory, or new heads
                self._write_and_map(index, {key: t for key, t in tensors.items() if key not in held and t.numel()})

    def _write_and_map(self, index: int, tensors: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / module_filename(index)
        staging = path.with_name(path.name + ".tmp")
        save_tensors(tensors, staging)
        os.replace(staging, path)
        loaded = load_file(str(path))
        for key, tensor in tensors.items():
            tensor.data = loaded[key]

    def after_phase(self, model: Any, progress: Path, trained_next: set[int]) -> None:
        """After a phase wrote `progress`: map every module but `trained_next` (the next phase's, copied into
        memory) to its file there."""
        read_module_folder(model, progress)
        groups = module_tensors(model)
        for index in trained_next:
            into_memory(groups[index].values())

    @staticmethod
    def map_lap_states(progress: Path, lap_states: dict[int, Any]) -> dict[int, Any]:
        """The multilap optimizer states kept for later laps, mapped from their files in `progress`."""
        mapped = {}
        for module, state in lap_states.items():
            path = progress / lap_state_filename(module)
            mapped[module] = torch.load(path, weights_only=True, mmap=True) if path.is_file() else state
        return mapped

    def finish(self) -> None:
        """Remove the files written at the start (mapped tensors stay valid: the mappings keep their pages)."""
        if self.folder.is_dir():
            for path in self.folder.glob("*.safetensors*"):
                path.unlink()
            if not any(self.folder.iterdir()):
                self.folder.rmdir()
