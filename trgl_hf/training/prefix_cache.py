"""The prefix cache of sequential training: the frozen modules' outputs, computed once per phase instead of every
epoch, with the inputs later blocks and heads read (attention masks, token ids) and the labels.

Rows are stored column-wise in shards: each shard holds, per column, one contiguous tensor (`[rows, ...]`) or, for
token columns, the tokens of its rows without their padding (`[tokens, ...]`) and the rows' offsets. A shard lives
in memory, or on disk as a safetensors file that is memory-mapped (one copy in the page cache for every process of
a machine). A batch is gathered with one indexing operation per shard it touches, already collated and padded: no
per-row Python work and no per-row tensor (whose overhead cost 8x the activations it held).

Padding: a batch gathered from the cache has the layout the uncached batch would have, so that cached and uncached
training run the same computation (the transport term and the heads read only real tokens; dropout draws the same
masks only on tensors of the same shape). Rows padded to one fixed width (right or left) come back at that width; rows
padded per batch (`DataCollatorWithPadding`) come back right-padded to the gathered batch's longest row, as the
collator pads them. Left padding per batch is refused: it moves every token by the batch's padding, which changes the
prefix's outputs (absolute positions), so no cache can give them.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import Dataset, TensorDataset
from transformers import DataCollatorWithPadding, DefaultDataCollator, default_data_collator

from .input_checks import is_iterable
from .memory_limits import available_memory, available_memory_report

logger = logging.getLogger(__name__)

TOKEN_COLUMNS = ("trgl_hidden_states", "input_ids", "attention_mask", "token_type_ids", "position_ids")
HIDDEN = "trgl_hidden_states"
SHARD_BYTES = 64 * 1024**2
"""Rows are flushed to a new shard once this many bytes are buffered (host memory stays bounded by it)."""
DEFAULT_MEMORY_FRACTION = 0.25
"""Without `trgl_prefix_cache_max_memory`, a cache may take this fraction of the memory available when it is built
(`MemAvailable`, or less under a cgroup memory limit: [`memory_limits.available_memory`])."""
_OFFSETS = ".offsets"
_WIDTHS, _LAYOUT = ".widths", ".layout"
"""Layout of the stored batches: the widths they were padded to; whether any row was padded on the left, and whether
any batch was padded beyond its longest row (padding to a fixed width, not per batch)."""
_META = (_WIDTHS, _LAYOUT)
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- the decision


def prefix_cache_decision(choice: str, dataset: Any, collator: Any) -> tuple[bool, str]:
    """Whether sequential phases train on cached prefix outputs, and why.

    Anything that may give other inputs on another pass counts as random unless `choice` is `"always"`: a dataset
    transform, a lazily mapped or iterable (streaming) dataset, a dataset of unknown kind, a custom collator.
    A collator that pads on the left to each batch's longest row is never cached (`"always"` is refused): the prefix's
    outputs then depend on the batch.

    Args:
        choice (`str`): `TRGLTrainingArguments.trgl_prefix_cache` (`"auto"`, `"always"` or `"never"`).
        dataset: the training dataset.
        collator: the data collator.
    """
    if choice == "always" and pads_left_per_batch(collator):
        raise ValueError(
            "`trgl_prefix_cache='always'`, but the collator pads on the left to each batch's longest row: every token "
            "then moves with its batch's padding, so the frozen prefix's outputs of a row depend on the batch it is "
            "in and cannot be cached. Pad on the right (`tokenizer.padding_side = 'right'`), pad to one length "
            "(`DataCollatorWithPadding(tokenizer, padding='max_length', max_length=...)`), or use "
            "`trgl_prefix_cache='auto'` (which recomputes the prefix here)."
        )
    if choice != "auto":
        return choice == "always", f"trgl_prefix_cache={choice!r}"
    if is_iterable(dataset):
        return False, "an iterable (streaming) dataset may give other examples on every pass; say 'always' to cache"
    if getattr(dataset, "_format_type", None) == "custom":
        return False, "the dataset has a transform (set_transform / with_transform), which may be random"
    if not (hasattr(dataset, "column_names") or isinstance(dataset, TensorDataset)):
        return False, f"a {type(dataset).__name__} may compute its examples randomly; say 'always' to cache"
    if not (collator is default_data_collator or isinstance(collator, (DefaultDataCollator, DataCollatorWithPadding))):
        return False, f"the collator {type(collator).__name__} may be random; say 'always' to cache"
    if pads_left_per_batch(collator):
        return False, (
            "the collator pads on the left to each batch's longest row, which moves every token by its batch's "
            "padding: the frozen prefix's outputs depend on the batch (pad on the right to cache them)"
        )
    return True, "the input pipeline is deterministic (a stored dataset, no transform, a standard collator)"


def pads_left_per_batch(collator: Any) -> bool:
    """Whether `collator` is a `DataCollatorWithPadding` padding on the left to each batch's longest row."""
    if not isinstance(collator, DataCollatorWithPadding):
        return False
    padding = "longest" if collator.padding is True else getattr(collator.padding, "value", collator.padding)
    return padding == "longest" and getattr(collator.tokenizer, "padding_side", "right") == "left"


def parse_bytes(value: int | str | None) -> int | None:
    """`1073741824`, `"1GiB"`, `"512MB"`, `"0.5GB"` -> bytes; `None` stays `None`."""
    if value is None or isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)(i?)B?\s*", str(value), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"Cannot read {value!r} as a size: write bytes, or e.g. '8GiB' / '500MB'.")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    return int(number * (1024 if binary else 1000) ** " KMGT".index(unit or " "))


# ---------------------------------------------------------------------------------------------------- storage


@dataclass
class Shard:
    """Some consecutive rows of a cache: per column a tensor, or for token columns tokens + `.offsets`."""

    rows: int
    tensors: dict[str, torch.Tensor]
    path: Path | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def _flatten_tokens(column: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The valid tokens of each row (`[B, L, ...]` -> `[sum(lengths), ...]`) and the rows' token counts."""
    valid = torch.arange(column.shape[1])[None, :] < lengths[:, None]
    return column[valid], lengths


def _memory_map(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as zero-copy views of a read-only memory map."""
    with open(path, "rb") as stream:
        header_size = int.from_bytes(stream.read(8), "little")
        header = json.loads(stream.read(header_size))
    whole = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = whole[8 + header_size + start : 8 + header_size + end]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        with warnings.catch_warnings():  # read-only on purpose: batches are gathered into new tensors
            warnings.simplefilter("ignore", UserWarning)
            if dtype is None:  # bfloat16: numpy has none, reinterpret 16-bit words
                array = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
            else:
                array = torch.from_numpy(raw.view(dtype))
        tensors[name] = array.reshape(info["shape"])
    return tensors


def fixed_width(widths: Iterable[int], left_padded: bool, beyond_longest: bool) -> int | None:
    """The one width every stored batch was padded to when the rows were padded to a fixed width (some batch was
    padded beyond its longest row, or on the left), else `None`: rows padded per batch (`DataCollatorWithPadding`)
    come back padded to the gathered batch's own longest row, as the collator would pad them.

    Where every stored batch had a row of the full width, fixed and per-batch padding look alike; they are taken as
    per batch (the same values: only real tokens are read, but dropout draws its masks on a narrower tensor).

    Raises:
        `ValueError`: left padding to different widths. Every token's position then depends on the batch's padding
            (absolute position embeddings, rotary angles), so the prefix's outputs of a row depend on the batch it is
            in, and cached outputs cannot be those of another batch.
    """
    widths = set(widths)
    if left_padded and len(widths) > 1:
        raise ValueError(
            f"The training batches are padded on the left to different widths ({sorted(widths)}): each token's "
            "position depends on how much padding its batch has, so the frozen prefix's outputs cannot be cached "
            "exactly. Pad on the right (`tokenizer.padding_side = 'right'`), pad every row to one length "
            "(`padding='max_length'`), or set `trgl_prefix_cache='never'`."
        )
    return next(iter(widths)) if len(widths) == 1 and (left_padded or beyond_longest) else None


def _check_dropped_labels(labels: torch.Tensor, lengths: torch.Tensor) -> None:
    """Token labels after a row's last real token are dropped by the cache (and come back as -100): refuse labels
    that the loss would read there."""
    dropped = torch.arange(labels.shape[1])[None, :] >= lengths[:, None]
    if bool((labels[dropped] != -100).any()):
        raise ValueError(
            "Some labels at padding positions are not -100, so the loss reads padding, which the prefix cache does "
            "not store. Set the labels of padding to -100 (as `DataCollatorForLanguageModeling` does), or set "
            "`trgl_prefix_cache='never'`."
        )


class ShardWriter:
    """Accumulates batches of prefix outputs and writes them as shards (in memory or safetensors files).

    Args:
        folder (`Path`, *optional*): where shard files go; `None` keeps shards in memory.
        prefix (`str`): file name prefix of this writer's shards (e.g. `"rank-00"`), sorted in row order.
        token_columns (`tuple[str, ...]`): columns stored without padding when the batch has a 2-d attention mask.
        dtype (`torch.dtype`, *optional*): storage dtype of the floating hidden states (default: as computed).
    """

    def __init__(self, folder: Path | None, prefix: str, token_columns: tuple[str, ...], dtype: torch.dtype | None):
        self.folder, self.prefix, self.token_columns, self.dtype = folder, prefix, token_columns, dtype
        self.shards: list[Shard] = []
        self._buffer: dict[str, list[torch.Tensor]] = {}
        self._buffered_rows = self._buffered_bytes = 0
        self.widths: set[int] = set()
        self.left_padded = self.beyond_longest = False

    def add(self, columns: dict[str, torch.Tensor]) -> None:
        """Add a batch (`[B, ...]` per column, on any device)."""
        columns = {name: value.detach().cpu() for name, value in columns.items()}
        if self.dtype is not None and columns[HIDDEN].is_floating_point():
            columns[HIDDEN] = columns[HIDDEN].to(self.dtype)
        mask = columns.get("attention_mask")
        lengths = None
        if mask is not None and mask.dim() == 2:
            lengths = self._record_layout(mask)
        for name, value in columns.items():
            is_tokens = lengths is not None and name in self.token_columns and value.dim() >= 2
            if is_tokens and value.shape[1] == mask.shape[1]:
                if name == "labels":
                    _check_dropped_labels(value, lengths)
                tokens, counts = _flatten_tokens(value, lengths)
                self._buffer.setdefault(name, []).append(tokens)
                self._buffer.setdefault(name + _OFFSETS, []).append(counts.to(torch.int64))
            else:
                self._buffer.setdefault(name, []).append(value)
        self._buffered_rows += len(columns[HIDDEN])
        self._buffered_bytes += sum(v.numel() * v.element_size() for v in columns.values())
        if self._buffered_bytes >= SHARD_BYTES:
            self.flush()

    def _record_layout(self, mask: torch.Tensor) -> torch.Tensor:
        """Note the batch's padded width and side; return each row's stored length (up to its last real token, so
        right padding is dropped and left padding kept)."""
        real = mask.bool()
        position = torch.arange(mask.shape[1])
        lengths = torch.where(real, position + 1, 0).amax(dim=1)
        lengths = torch.where(real.any(dim=1), lengths, mask.shape[1])
        self.widths.add(int(mask.shape[1]))
        self.left_padded = self.left_padded or bool((real.any(dim=1) & ~real[:, 0]).any())
        self.beyond_longest = self.beyond_longest or int(lengths.amax()) < mask.shape[1]
        fixed_width(self.widths, self.left_padded, self.beyond_longest)  # refuses per-batch left padding at once
        return lengths

    def flush(self) -> None:
        """Write the buffered rows as one shard."""
        if not self._buffered_rows:
            return
        tensors = {}
        for name, parts in self._buffer.items():
            if name.endswith(_OFFSETS):
                tensors[name] = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cat(parts).cumsum(0)])
            else:
                tensors[name] = torch.cat(parts)
        if self.widths:
            tensors[_WIDTHS] = torch.tensor(sorted(self.widths), dtype=torch.int64)
            tensors[_LAYOUT] = torch.tensor([int(self.left_padded), int(self.beyond_longest)], dtype=torch.int64)
        shard = Shard(self._buffered_rows, tensors)
        if self.folder is not None:
            path = self.folder / f"{self.prefix}-shard-{len(self.shards):05d}.safetensors"
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
            shard = Shard(self._buffered_rows, _memory_map(path), path)
        self.shards.append(shard)
        self._buffer, self._buffered_rows, self._buffered_bytes = {}, 0, 0


class PrefixCache(Dataset):
    """Outputs of the frozen prefix for every training example (in dataset order), with their labels and context.

    `cache[indices]` / `cache.__getitems__(indices)` gathers a whole batch at once, collated and padded on the right
    (token ids with `pad_values["input_ids"]`, labels with -100) to the width the rows were padded to when they all
    had one (`padded_width`), else to the batch's longest row. `select(indices)` gives a view in another row order.

    Args:
        shards (`list[Shard]`): the rows, in order.
        pad_values (`dict[str, int]`, *optional*): padding value per column (`labels`: -100, others 0 by default).
            Set `pad_to_multiple_of` (the collator's) to round per-batch widths up as the collator does.
        folder (`Path`, *optional*): the files of a disk-backed cache (removed by [`PrefixCache.remove`]).
        first_module (`int`): the 0-based module that reads these outputs.
    """

    def __init__(self, shards: list[Shard], pad_values: dict[str, int] | None = None, folder: Path | None = None,
                 first_module: int = 1, lap: int = 1, hidden_dtype: torch.dtype | None = None) -> None:  # fmt: skip
        self.shards, self.folder, self.first_module, self.lap = shards, folder, first_module, lap
        self.hidden_dtype = hidden_dtype
        self.pad_values = {"labels": -100, **(pad_values or {})}
        self.starts = np.cumsum([0] + [shard.rows for shard in shards])
        self.index: np.ndarray | None = None  # row order of a `select` view
        widths = {int(w) for shard in shards for w in shard.tensors.get(_WIDTHS, torch.zeros(0)).tolist()}
        layouts = [shard.tensors[_LAYOUT].tolist() for shard in shards if _LAYOUT in shard.tensors]
        self.padded_width = fixed_width(widths, any(left for left, _ in layouts), any(beyond for _, beyond in layouts))
        self.pad_to_multiple_of: int | None = None  # the collator's: per-batch widths are rounded up to a multiple

    @property
    def on_disk(self) -> bool:
        return self.folder is not None

    @property
    def nbytes(self) -> int:
        return sum(shard.nbytes for shard in self.shards)

    def __len__(self) -> int:
        return int(self.starts[-1]) if self.index is None else len(self.index)

    def select(self, indices: Iterable[int]) -> PrefixCache:
        """A view of the rows `indices` (in that order), sharing the storage."""
        view = PrefixCache.__new__(PrefixCache)
        view.__dict__.update(self.__dict__)
        indices = np.asarray(list(indices), dtype=np.int64)
        view.index = indices if self.index is None else self.index[indices]
        return view

    def __getitem__(self, index: int | list[int]) -> dict[str, torch.Tensor]:
        if isinstance(index, (int, np.integer)):
            batch = self.gather([int(index)])
            return {name: value[0] for name, value in batch.items()}
        return self.gather(index)

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """The DataLoader's batched fetch: one already collated batch (see [`collate_prefix_batch`])."""
        return [CachedBatch(self.gather(indices))]

    def gather(self, indices: Iterable[int]) -> dict[str, torch.Tensor]:
        """The rows `indices`, collated: one indexing operation per shard touched."""
        rows = np.asarray(list(indices), dtype=np.int64)
        if self.index is not None:
            rows = self.index[rows]
        which = np.searchsorted(self.starts, rows, side="right") - 1
        lengths = self._token_lengths(rows, which)
        longest = int(lengths.max()) if lengths is not None and len(lengths) else 0
        longest = max(longest, self.padded_width or 0)  # rows padded to one width come back at that width
        multiple = self.pad_to_multiple_of
        if multiple and self.padded_width is None and longest % multiple:
            longest += multiple - longest % multiple  # as DataCollatorWithPadding(pad_to_multiple_of=...) pads
        batch: dict[str, torch.Tensor] = {}
        for number in np.unique(which):
            shard, positions = self.shards[number], np.flatnonzero(which == number)
            local = torch.from_numpy(rows[positions] - self.starts[number])
            target = torch.from_numpy(positions)
            for name, tensor in shard.tensors.items():
                if name.endswith(_OFFSETS) or name in _META:
                    continue
                offsets = shard.tensors.get(name + _OFFSETS)
                if offsets is None:
                    values = tensor[local]
                else:
                    start, count = offsets[local], offsets[local + 1] - offsets[local]
                    step = torch.arange(longest)
                    valid = step[None, :] < count[:, None]
                    values = tensor[torch.where(valid, start[:, None] + step[None, :], 0)]
                    values[~valid] = self.pad_values.get(name, 0)
                if name not in batch:
                    batch[name] = values.new_empty((len(rows), *values.shape[1:]))
                batch[name][target] = values
        hidden = batch.get(HIDDEN)
        if self.hidden_dtype is not None and hidden is not None and hidden.dtype != self.hidden_dtype:
            batch[HIDDEN] = hidden.to(self.hidden_dtype)
        return batch

    def _token_lengths(self, rows: np.ndarray, which: np.ndarray) -> torch.Tensor | None:
        offsets_name = HIDDEN + _OFFSETS
        if offsets_name not in self.shards[0].tensors:
            return None
        lengths = torch.zeros(len(rows), dtype=torch.int64)
        for number in np.unique(which):
            positions = np.flatnonzero(which == number)
            offsets = self.shards[number].tensors[offsets_name]
            local = torch.from_numpy(rows[positions] - self.starts[number])
            lengths[torch.from_numpy(positions)] = offsets[local + 1] - offsets[local]
        return lengths

    def iter_batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[dict]:
        """Rows `start..stop` in order, `batch_size` at a time (to compute the next module's cache)."""
        stop = len(self) if stop is None else stop
        for first in range(start, stop, batch_size):
            yield self.gather(range(first, min(first + batch_size, stop)))

    def remove(self) -> None:
        """Drop the rows (and the files of a disk-backed cache)."""
        self.shards = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class CachedBatch(dict):
    """A batch the cache gathered itself (already collated)."""


def collate_prefix_batch(items: list[Any]) -> dict[str, torch.Tensor]:
    """The collator of a [`PrefixCache`]: its batches arrive collated from `__getitems__`."""
    if len(items) == 1 and isinstance(items[0], CachedBatch):
        return dict(items[0])
    raise TypeError("A PrefixCache batch must come from PrefixCache.__getitems__ (use a torch DataLoader).")


# ---------------------------------------------------------------------------------------------------- building


@dataclass
class CachePlan:
    """Where a cache goes and why: `folder` is `None` for memory."""

    folder: Path | None
    reason: str
    estimate: int = 0
    budget: int = 0


def plan_storage(
    bytes_per_row: float, rows: int | None, budget: int | None, folder: Path, world_size: int, held: int = 0
) -> CachePlan:
    """Memory when the estimated size fits the budget in a single process; otherwise memory-mapped files (also for
    a stream, whose size is unknown). `held` bytes of an earlier cache still in memory while this one is built count
    against the budget."""
    if rows is None:
        return CachePlan(folder, f"a stream of unknown length ({bytes_per_row / 1024:.1f} KiB per row): on disk in "
                         f"{folder}")  # fmt: skip
    estimate = int(math.ceil(bytes_per_row * rows))
    of_what = ""
    if budget is None:  # the smaller of MemAvailable and what the process's cgroup limit leaves
        available = available_memory_report()
        budget = int(available.bytes * DEFAULT_MEMORY_FRACTION)
        share = f"{DEFAULT_MEMORY_FRACTION:.0%} of {available.bytes / 1024**2:.1f} MiB available"
        of_what = f" ({share}: {available.source})"
    size = f"{estimate / 1024**2:.1f} MiB ({rows} rows x {bytes_per_row / 1024:.1f} KiB)"
    if held:
        size += f" + {held / 1024**2:.1f} MiB of the previous cache, in memory while this one is built"
    if world_size > 1:
        return CachePlan(folder, f"{size}: memory-mapped files shared by the {world_size} processes", estimate, budget)
    within = f"the budget of {budget / 1024**2:.1f} MiB{of_what}"
    if estimate + held <= budget:
        return CachePlan(None, f"{size}, within {within}: in memory", estimate, budget)
    return CachePlan(folder, f"{size}, over {within}: on disk in {folder}", estimate, budget)


@torch.no_grad()
def compute_prefix_outputs(
    model: Any,
    batches: Iterable[dict[str, torch.Tensor]],
    last_module: int,
    autocast: Callable[[], AbstractContextManager],
) -> Iterator[dict[str, torch.Tensor]]:
    """For each batch (on the model's device), the columns to cache: the output of module `last_module`, the labels
    and the context inputs. Batches of an earlier cache (with `trgl_hidden_states`) run from the module that reads it
    (`model.cached_input_module`), so one module runs per batch."""
    for batch in batches:
        batch = dict(batch)
        labels = batch.pop("labels")
        with autocast():
            for step in model.iter_modules(last_module=last_module, frozen_heads=False, **batch):
                hidden = step.hidden_state
        context = {k: v for k, v in batch.items() if k in model.adapter.context_input_names}
        yield {HIDDEN: hidden, "labels": labels, **context}


def keeps_random_state(function: Callable) -> Callable:
    """Run `function` with the CPU random number generator forked: its state afterwards is the state before."""

    @functools.wraps(function)
    def forked(*args: Any, **kwargs: Any) -> Any:
        with torch.random.fork_rng(devices=[]):
            return function(*args, **kwargs)

    return forked


@keeps_random_state
def build_prefix_cache(
    outputs: Iterator[dict[str, torch.Tensor]],
    rows: int | None,
    *,
    folder: Path,
    budget: int | None,
    dtype: torch.dtype | None,
    token_columns: tuple[str, ...],
    pad_values: dict[str, int],
    first_module: int,
    lap: int,
    local_rank: int = 0,
    local_world: int = 1,
    barrier: Any = None,
    held: int = 0,
    pad_to_multiple_of: int | None = None,
) -> PrefixCache:
    """Store the prefix outputs `outputs` (this process's share of `rows` examples, in order) as a [`PrefixCache`].

    The size is estimated from the first batch: in memory when it fits `budget` (single process), otherwise in
    `folder` as safetensors shards written as batches arrive. `held` bytes of the in-memory cache this one is
    computed from count against the budget. With several processes on a machine, each computes its share of the rows
    (`local_rank` of `local_world`), and all of them then map the same files.

    Building the cache leaves the random number generator as it found it (the data loader that feeds `outputs` draws
    a seed from it): a cached run then draws the same dropout masks and batch order as an uncached one.
    """
    barrier = barrier or (lambda: None)
    outputs = iter(outputs)
    first = next(outputs, None)
    hidden_dtype = first[HIDDEN].dtype if first is not None else None
    per_row = sum(v.numel() * v.element_size() for v in first.values()) / max(len(first[HIDDEN]), 1) if first else 0
    if dtype is not None and first is not None and first[HIDDEN].is_floating_point():
        saved = first[HIDDEN].element_size() - torch.empty((), dtype=dtype).element_size()
        per_row -= first[HIDDEN][0].numel() * saved
    plan = plan_storage(per_row, rows, budget, folder, local_world, held)
    if plan.folder is not None:
        if local_rank == 0:
            shutil.rmtree(plan.folder, ignore_errors=True)
            plan.folder.mkdir(parents=True)
        barrier()
    writer = ShardWriter(plan.folder, f"rank-{local_rank:03d}", token_columns, dtype)
    for batch in itertools.chain([first], outputs) if first is not None else ():  # one batch in memory at a time
        writer.add(batch)
    writer.flush()
    shards = writer.shards
    if plan.folder is not None and local_world > 1:
        barrier()
        shards = [Shard(0, _memory_map(path), path) for path in sorted(plan.folder.glob("rank-*-shard-*.safetensors"))]
        for shard in shards:
            any_column = next(name for name in shard.tensors if not name.endswith(_OFFSETS) and name not in _META)
            offsets = shard.tensors.get(any_column + _OFFSETS)
            shard.rows = len(offsets) - 1 if offsets is not None else len(shard.tensors[any_column])
    cache = PrefixCache(shards, pad_values, plan.folder, first_module, lap, hidden_dtype)
    cache.pad_to_multiple_of = pad_to_multiple_of
    logger.info("Prefix cache for module %d: %s; stored %.1f MiB in %d shards.", first_module + 1, plan.reason,
                cache.nbytes / 1024**2, len(shards))  # fmt: skip
    return cache


__all__ = [
    "build_prefix_cache",
    "CachePlan",
    "CachedBatch",
    "PrefixCache",
    "ShardWriter",
    "TOKEN_COLUMNS",
    "available_memory",
    "collate_prefix_batch",
    "compute_prefix_outputs",
    "parse_bytes",
    "plan_storage",
    "pads_left_per_batch",
    "prefix_cache_decision",
]
