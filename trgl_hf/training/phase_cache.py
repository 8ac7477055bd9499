"""The prefix cache of a run's sequential phases, held by the trainer: phase k trains on the outputs of modules
1..k-1, computed once when the phase starts (from the previous phase's cache when it holds module k-2's outputs: one
module runs; else from the data), removed when the next cache replaces it and when the run ends. Each process of a
machine computes its share of the rows."""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from transformers import Trainer

from .hf_internals import collator_without_unused_columns, prepare_inputs, remove_unused_columns
from .input_checks import is_iterable
from .phases import Phase
from .prefix_cache import TOKEN_COLUMNS, PrefixCache, build_prefix_cache, compute_prefix_outputs, parse_bytes

logger = logging.getLogger(__name__)


def local_share(trainer: Trainer) -> tuple[int, int]:
    """`(local rank, processes on this machine)`."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", trainer.args.world_size or 1))
    return trainer.accelerator.local_process_index, local_world


def cached_batches(trainer: Trainer, previous: PrefixCache) -> Iterable[dict[str, Any]]:
    """This process's share of the previous phase's cached rows, as prepared batches."""
    (rank, world), rows = local_share(trainer), int(previous.starts[-1])
    start, stop = rows * rank // world, rows * (rank + 1) // world
    batches = previous.iter_batches(trainer.args.per_device_train_batch_size, start, stop)
    return (prepare_inputs(trainer, batch) for batch in batches)


def data_batches(trainer: Trainer, dataset: Any) -> tuple[Iterable[dict[str, Any]], int | None]:
    """This process's share of the training data as prepared batches, and how many rows the data holds (None for a
    stream: the processes of a machine take turns by batch)."""
    args, (rank, world) = trainer.args, local_share(trainer)
    if hasattr(dataset, "column_names"):
        dataset = remove_unused_columns(trainer, dataset, description="prefix cache")
    collator = collator_without_unused_columns(trainer, trainer.data_collator, description="prefix cache")
    loader_args = dict(batch_size=args.per_device_train_batch_size, collate_fn=collator,
                       num_workers=args.dataloader_num_workers)  # fmt: skip
    if is_iterable(dataset):
        loader, rows = itertools.islice(DataLoader(dataset, **loader_args), rank, None, world), None
    else:
        rows = len(dataset)
        share = range(rows * rank // world, rows * (rank + 1) // world)
        part = dataset.select(share) if hasattr(dataset, "select") else Subset(dataset, share)
        loader = DataLoader(part, **loader_args)
    return (prepare_inputs(trainer, batch) for batch in loader), rows


class PhasePrefixCache:
    """The run's current prefix cache (`current`), built for each cached phase and removed at the end.

    Args:
        root (`Path`): the folder the caches are written under (`trgl_prefix_cache_dir`, or the run's).
        keep_root (`bool`): the root was given by the user: keep the folder itself when the run ends.
    """

    def __init__(self, root: Path, keep_root: bool):
        self.root, self.keep_root = root, keep_root
        self.current: PrefixCache | None = None

    @classmethod
    def for_run(cls, args: Any) -> PhasePrefixCache:
        """The caches of a run with arguments `args`: under `trgl_prefix_cache_dir`, else `output_dir`."""
        root = args.trgl_prefix_cache_dir or Path(args.output_dir) / ".trgl-prefix-cache"
        return cls(Path(root), keep_root=bool(args.trgl_prefix_cache_dir))

    def build(self, trainer: Trainer, phase: Phase, dataset: Any) -> PrefixCache:
        """The outputs of modules 1..k-1 for `phase` (k = `phase.cached_from + 1`), replacing the previous cache."""
        model, args, first, previous = trainer.model, trainer.args, phase.cached_from, self.current
        model.to(args.device)
        trainer.strategy.broadcast_buffers(model)
        if previous is not None and previous.first_module == first - 1 and previous.lap == phase.lap:
            batches, rows = cached_batches(trainer, previous), int(previous.starts[-1])
            source, reads_cache = f"module {first}'s cache", previous.first_module
        else:
            (batches, rows), source, reads_cache = data_batches(trainer, dataset), "the data", None
        (rank, world), pad_id = local_share(trainer), getattr(model.backbone.config, "pad_token_id", None)
        node = trainer.accelerator.process_index // max(world, 1)
        model.train()  # frozen modules stay in eval mode (TRGLModel.train)
        previous_input, model.cached_input_module = model.cached_input_module, reads_cache
        try:
            outputs = compute_prefix_outputs(model, batches, first - 1, trainer.accelerator.autocast)
            cache = build_prefix_cache(
                outputs, rows, folder=self.root / f"node-{node:02d}" / f"lap-{phase.lap:02d}-module-{first + 1:02d}",
                budget=parse_bytes(args.trgl_prefix_cache_max_memory),
                dtype=getattr(torch, args.trgl_prefix_cache_dtype) if args.trgl_prefix_cache_dtype else None,
                token_columns=(*TOKEN_COLUMNS, "labels") if model.task.is_language_model else TOKEN_COLUMNS,
                pad_values={"input_ids": pad_id if pad_id is not None else 0}, first_module=first, lap=phase.lap,
                local_rank=rank, local_world=world, barrier=trainer.accelerator.wait_for_everyone,
                held=previous.nbytes if previous is not None and not previous.on_disk else 0,
                pad_to_multiple_of=getattr(trainer.data_collator, "pad_to_multiple_of", None),
            )  # fmt: skip
        finally:
            model.cached_input_module = previous_input
        logger.info("%s: the prefix cache was computed from %s.", phase.name, source)
        if previous is not None:
            trainer.accelerator.wait_for_everyone()  # every process has read the previous cache
            previous.remove()
        self.current = cache
        return cache

    def drop(self, accelerator: Any) -> None:
        """Remove the last cache and the run's cache folders (a given `trgl_prefix_cache_dir` itself is kept)."""
        if self.current is None:
            return
        accelerator.wait_for_everyone()
        self.current.remove()
        self.current = None
        if accelerator.is_local_main_process:
            for node in self.root.glob("node-*"):
                shutil.rmtree(node, ignore_errors=True)
            if not self.keep_root and self.root.is_dir() and not any(self.root.iterdir()):
                self.root.rmdir()
