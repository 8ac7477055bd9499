"""A TRGL model's weights as one safetensors file per module, and modules that live in those files.

A module folder is a sharded checkpoint whose shards are the modules: `trgl-module-01.safetensors`, ...,
`trgl-shared.safetensors` (what no module owns: the model's own buffers, unused parts of the base) and the usual
`model.safetensors.index.json` and `config.json`, so `TRGLModel.from_pretrained(folder)` loads it. A folder written
after a phase links the files of the modules the phase left unchanged from the previous folder and writes only the
others.

*Mapping* a module points its parameters and buffers at the tensors of its file, read through a private memory map
(`safetensors` on CPU): nothing is read until a forward touches it, the pages are the page cache's (the kernel drops
them under memory pressure instead of failing), and a write (an optimizer step) copies only the pages it changes.
This is how `trgl_offload="disk"` keeps only the trained module in memory (`trgl_hf.training.offload`).
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .atomic_files import link_file

SHARED_FILE = "trgl-shared.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LAP_STATE_PATTERN = "trgl-lap-optimizer-*.pt"


def module_filename(index: int | None) -> str:
    """File of module `index` (0-based), or of the shared tensors for None."""
    return SHARED_FILE if index is None else f"trgl-module-{index + 1:02d}.safetensors"


def lap_state_filename(module: int) -> str:
    """File of module `module`'s (0-based) multilap optimizer state in a progress folder."""
    return f"trgl-lap-optimizer-{module + 1:02d}.pt"


def module_tensors(model: Any) -> dict[int | None, dict[str, torch.Tensor]]:
    """The model's state-dict tensors (parameters and persistent buffers, each once under its first name), grouped by
    the module that owns them (0-based; None for what no module owns). The tensors are the model's own objects."""
    owner: dict[int, int] = {}
    for index in range(model.num_modules):
        for tensor in [*model.module_parameters(index), *model.module_buffers([index])]:
            owner.setdefault(id(tensor), index)
    groups: dict[int | None, dict[str, torch.Tensor]] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            groups.setdefault(owner.get(id(tensor)), {})[name] = tensor
    return groups


def write_module_folder(
    model: Any, folder: Path, changed: set[int] | None = None, previous: Path | None = None
) -> None:
    """Write `model` to `folder` (an empty staging folder) as a module folder.

    Args:
        model (`TRGLModel`): the model to write.
        folder (`Path`): where to write.
        changed (`set[int]`, *optional*): modules (0-based) that changed since `previous`; the others are hard-linked
            from `previous` where it has them. None writes every module.
        previous (`Path`, *optional*): the module folder written before.
    """
    weight_map, total = {}, 0
    for index, tensors in module_tensors(model).items():
        name = module_filename(index)
        source = previous / name if previous is not None else None
        unchanged = index is not None and changed is not None and index not in changed
        if unchanged and source is not None and source.is_file() and _same_keys(source, tensors):
            link_file(source, folder / name)
        else:
            save_tensors(tensors, folder / name)
        weight_map.update(dict.fromkeys(tensors, name))
        total += sum(value.numel() * value.element_size() for value in tensors.values())
    model.config.save_pretrained(folder)
    index_payload = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index_payload, indent=2, sort_keys=True) + "\n")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write `tensors` (detached, contiguous, on CPU) to the safetensors file `path`."""
    save_file({key: value.detach().contiguous().cpu() for key, value in tensors.items()}, str(path),
              metadata={"format": "pt"})  # fmt: skip


def _same_keys(path: Path, tensors: dict[str, torch.Tensor]) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys()) == set(tensors)


def is_module_folder(folder: Path) -> bool:
    """Whether `folder` was written by [`write_module_folder`]."""
    return (folder / SHARED_FILE).is_file() and (folder / INDEX_FILE).is_file()


def read_module_folder(model: Any, folder: Path, mapped: set[int | None] | None = None) -> None:
    """Load a module folder into `model`: the modules in `mapped` (0-based, None for the shared file; all by default)
    are mapped to their files, the others copied into the model's tensors.

    Raises:
        `ValueError`: a file is missing or does not hold the model's tensors (another model's folder).
    """
    for index, tensors in module_tensors(model).items():
        path = folder / module_filename(index)
        loaded = load_file(str(path)) if path.is_file() else {}
        wrong = [
            key
            for key, tensor in tensors.items()
            if key not in loaded or (loaded[key].shape, loaded[key].dtype) != (tensor.shape, tensor.dtype)
        ]
        if wrong or set(loaded) != set(tensors):
            found = "is missing" if not loaded else f"does not hold this model's {(wrong or sorted(loaded))[0]}"
            raise ValueError(f"{path} {found}: the folder holds another model's weights (another base, cut or "
                             "head), or was damaged. Load it into the model that wrote it.")  # fmt: skip
        for key, tensor in tensors.items():
            if mapped is None or index in mapped:
                tensor.data = loaded[key]
            else:
                with torch.no_grad():
                    tensor.copy_(loaded[key])


class FileMappings:
    """Which address ranges of this process map a file (`/proc/self/maps`), to tell tensors that already live in a
    checkpoint file (a base loaded with `from_pretrained`) from tensors in anonymous memory."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        try:
            lines = Path("/proc/self/maps").read_text().splitlines()
        except OSError:
            return
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and not fields[5].endswith(" (deleted)"):
                start, end = (int(value, 16) for value in fields[0].split("-"))
                self.ranges.append((start, end))
        self.ranges.sort()
        self.starts = [start for start, _ in self.ranges]

    def holds(self, tensor: torch.Tensor) -> bool:
        """Whether the whole of `tensor`'s storage lies in one file mapping (on CPU)."""
        if tensor.device.type != "cpu" or not self.ranges:
            return False
        storage = tensor.untyped_storage()
        start, size = storage.data_ptr(), storage.nbytes()
        position = bisect.bisect_right(self.starts, start) - 1
        return position >= 0 and self.ranges[position][0] <= start and start + size <= self.ranges[position][1]
