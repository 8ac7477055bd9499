"""The prefix cache of sequential training: the frozen modules' outputs, computed once per phase instead of every
epoch, with the inputs later blocks and heads read (attention masks, token ids) and the labels."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset
from transformers import DataCollatorWithPadding, DefaultDataCollator, default_data_collator


class PrefixCacheDataset(Dataset):
    """Outputs of the frozen prefix, computed once, with their labels and the inputs that blocks need as context
    (attention masks, ...) — sequential and multi-lap modes. Token rows are stored without their padding."""

    def __init__(self, rows: list[dict[str, torch.Tensor]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.rows[index]


TOKEN_COLUMNS = ("trgl_hidden_states", "input_ids", "attention_mask", "token_type_ids", "position_ids")


def collate_cached_rows(
    rows: list[dict[str, torch.Tensor]], pad_values: dict[str, int] | None = None
) -> dict[str, torch.Tensor]:
    """Stack cached rows, right-padding token rows to the longest row of the batch.

    Args:
        rows (`list[dict]`): cached rows (see `split_into_rows`).
        pad_values (`dict[str, int]`, *optional*): padding value per column, e.g. `{"input_ids": pad_token_id,
            "labels": -100}` (a decoder classifier finds the last token by the pad id); 0 for the others.
    """
    pad_values = {"labels": -100, **(pad_values or {})}
    batch = {}
    for name in rows[0]:
        tensors = [row[name] for row in rows]
        if tensors[0].dim() >= 1 and len({t.shape[0] for t in tensors}) > 1:
            length = max(t.shape[0] for t in tensors)
            pad = pad_values.get(name, 0)
            tensors = [
                torch.nn.functional.pad(t, (0, 0) * (t.dim() - 1) + (0, length - t.shape[0]), value=pad)
                for t in tensors
            ]
        batch[name] = torch.stack(tensors)
    return batch


def split_into_rows(
    columns: dict[str, torch.Tensor], token_columns: tuple[str, ...] = (*TOKEN_COLUMNS, "labels")
) -> list[dict[str, torch.Tensor]]:
    """Cut a batch into per-example rows, dropping the right padding of the `token_columns` (per the attention
    mask); other columns (a classifier's labels, multi-hot rows) are kept whole."""
    mask = columns.get("attention_mask")
    rows = []
    for index in range(len(columns["labels"])):
        length = None
        if mask is not None and mask.dim() == 2:
            positions = mask[index].nonzero()
            length = int(positions.max()) + 1 if len(positions) else mask.shape[1]
        row = {}
        for name, column in columns.items():
            value = column[index]
            if length is not None and name in token_columns and value.dim() >= 1 and value.shape[0] == mask.shape[1]:
                value = value[:length]
            row[name] = value.clone()
        rows.append(row)
    return rows


def prefix_cache_decision(choice: str, dataset: Any, collator: Any) -> tuple[bool, str]:
    """Whether sequential phases train on cached prefix outputs, and why.

    Args:
        choice (`str`): `TRGLTrainingArguments.trgl_prefix_cache` (`"auto"`, `"always"` or `"never"`).
        dataset: the training dataset.
        collator: the data collator.
    """
    if choice != "auto":
        return choice == "always", f"trgl_prefix_cache={choice!r}"
    has_transform = getattr(dataset, "_format_type", None) == "custom"
    known_dataset = hasattr(dataset, "column_names") or isinstance(dataset, TensorDataset)
    known_collator = collator is default_data_collator or isinstance(
        collator, (DefaultDataCollator, DataCollatorWithPadding)
    )
    if known_dataset and not has_transform and known_collator:
        return True, "the input pipeline is deterministic (no dataset transform, standard collator)"
    return False, "the input pipeline may be random (dataset transform or custom collator)"


def cache_collator(pad_token_id: int | None) -> Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]]:
    """The collator of cached rows: token ids are re-padded with the model's pad id (a decoder classifier finds its
    last token by it)."""
    return functools.partial(
        collate_cached_rows, pad_values={"input_ids": pad_token_id if pad_token_id is not None else 0}
    )


@torch.no_grad()
def build_prefix_cache(
    model: Any,
    batches: Iterable[dict[str, torch.Tensor]],
    first_module: int,
    autocast: AbstractContextManager,
) -> PrefixCacheDataset:
    """Run the frozen modules `0 .. first_module - 1` once over `batches` (already on the model's device) and keep,
    per example, their output, its label and the context inputs (`model.adapter.context_input_names`)."""
    model.train()  # frozen modules stay in eval mode (TRGLModel.train)
    token_columns = (*TOKEN_COLUMNS, "labels") if model.task.is_language_model else TOKEN_COLUMNS
    rows: list[dict[str, torch.Tensor]] = []
    with autocast:
        for batch in batches:
            labels = batch.pop("labels")
            for step in model.iter_modules(last_module=first_module - 1, frozen_heads=False, **batch):
                hidden = step.hidden_state
            context = {k: v for k, v in batch.items() if k in model.adapter.context_input_names}
            columns = {"trgl_hidden_states": hidden, "labels": labels, **context}
            rows += split_into_rows({name: value.cpu() for name, value in columns.items()}, token_columns)
    return PrefixCacheDataset(rows)


__all__ = [
    "PrefixCacheDataset",
    "TOKEN_COLUMNS",
    "build_prefix_cache",
    "cache_collator",
    "collate_cached_rows",
    "prefix_cache_decision",
    "split_into_rows",
]
