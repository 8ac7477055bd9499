"""Checks of the data against the model, run before anything is trained or written.

Each names the dataset, the column and the fix. The checks read a fixed sample of rows (as the model will receive
them, dataset transforms included) except for sequence lengths, which are read for every row of a `datasets.Dataset`.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

SAMPLE_ROWS = 256


def _sample(dataset: Any) -> list[dict[str, np.ndarray]]:
    size = len(dataset)
    indices = sorted({int(i) for i in np.linspace(0, size - 1, min(size, SAMPLE_ROWS))})
    rows = []
    for index in indices:
        row = dataset[index]
        if not isinstance(row, dict):
            return []
        rows.append({name: _array(value) for name, value in row.items()})
    return rows


def _array(value: Any) -> np.ndarray | Any:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError):
        return value


def max_sequence_length(model: Any) -> int | None:
    """The longest token row the base model's position table holds (None for rotary / relative models)."""
    config = model.backbone.config
    model_type = getattr(config, "model_type", None)
    if model_type in ("roberta", "xlm-roberta"):  # positions start after the padding index
        return config.max_position_embeddings - (config.pad_token_id or 0) - 1
    if model_type == "gpt2":
        return config.n_positions
    if model_type in ("bert", "electra", "distilbert", "opt"):
        return config.max_position_embeddings
    if model_type == "deberta-v2" and getattr(config, "position_biased_input", True):
        return config.max_position_embeddings
    return None


def check_sequence_lengths(dataset: Any, model: Any, name: str) -> None:
    """Refuse token rows longer than the base model's position table."""
    limit = max_sequence_length(model)
    if dataset is None or limit is None or "input_ids" not in (getattr(dataset, "column_names", None) or []):
        return
    rows = dataset.with_format(None)["input_ids"]
    longest = max((len(row) for row in rows), default=0)
    if longest > limit:
        raise ValueError(
            f"`{name}` has `input_ids` rows of {longest} tokens but the model has only {limit} positions: truncate "
            f"the inputs (e.g. `tokenizer(..., truncation=True, max_length={limit})`) or use shorter blocks."
        )


def check_model_inputs(dataset: Any, model: Any, name: str) -> None:
    """Refuse inputs the model cannot read: integer pixels, wrong channels or image size, token or token type ids
    outside the vocabularies, causal-LM labels of another shape than the tokens.

    Args:
        dataset: a `datasets.Dataset` or a map-style dataset of dicts.
        model (`TRGLModel`): the model to train.
        name (`str`): how to call the dataset in messages.
    """
    if dataset is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
        return
    config = model.backbone.config
    for row in _sample(dataset):  # columns a collator builds later are checked by the model itself
        pixels = row.get("pixel_values")
        if isinstance(pixels, np.ndarray):
            _check_pixels(pixels, config, model, name)
        ids = row.get("input_ids")
        if isinstance(ids, np.ndarray):
            _check_tokens(row, ids, config, model, name)


def _check_pixels(pixels: np.ndarray, config: Any, model: Any, name: str) -> None:
    if pixels.dtype.kind not in "f":
        raise ValueError(
            f"`{name}` has `pixel_values` of dtype {pixels.dtype}: the model expects normalised floats; convert the "
            "images with the model's image processor (e.g. `AutoImageProcessor`: rescale to [0, 1] and normalise)."
        )
    channels = getattr(config, "num_channels", None)
    if pixels.ndim != 3 or (channels is not None and pixels.shape[0] != channels):
        raise ValueError(
            f"`{name}` has `pixel_values` of shape {pixels.shape} per example but the model reads "
            f"({channels}, height, width): give channels first, with {channels} channel(s)."
        )
    size = getattr(config, "image_size", None)
    size = size if isinstance(size, int) or size is None else size[0]
    if model.adapter.spec.fixed_image_size and size is not None and tuple(pixels.shape[1:]) != (size, size):
        raise ValueError(
            f"`{name}` has images of {pixels.shape[1]}x{pixels.shape[2]} pixels but the model's position embeddings "
            f"are for {size}x{size}: resize them (the model's image processor does) to {size}x{size}."
        )


def _check_tokens(row: dict[str, Any], ids: np.ndarray, config: Any, model: Any, name: str) -> None:
    if ids.dtype.kind not in "iu":
        raise ValueError(f"`{name}` has `input_ids` of dtype {ids.dtype}: give integer token ids (tokenize the text).")
    vocab = getattr(config, "vocab_size", None)
    if ids.size and (ids.min() < 0 or (vocab is not None and ids.max() >= vocab)):
        raise ValueError(
            f"`{name}` has `input_ids` in [{ids.min()}, {ids.max()}] but the model's vocab_size is {vocab}: "
            "tokenize with the model's own tokenizer."
        )
    types = row.get("token_type_ids")
    type_vocab = getattr(config, "type_vocab_size", None)
    if isinstance(types, np.ndarray) and types.size and type_vocab is not None and types.max() >= type_vocab:
        raise ValueError(
            f"`{name}` has `token_type_ids` up to {types.max()} but the model has type_vocab_size={type_vocab}: drop "
            "the column or tokenize with the model's own tokenizer."
        )
    labels = row.get("labels")
    if model.task.is_language_model and isinstance(labels, np.ndarray) and labels.shape != ids.shape:
        raise ValueError(
            f"`{name}` has causal-LM `labels` of shape {labels.shape} for `input_ids` of shape {ids.shape}: the "
            "labels are the token ids themselves (shifted inside the loss); use `labels = input_ids`."
        )


def check_batch_fits(dataset: Any, args: Any, name: str) -> None:
    """Refuse a run that would have no training batch (every example dropped by `dataloader_drop_last`)."""
    if dataset is None or not hasattr(dataset, "__len__") or not args.dataloader_drop_last:
        return
    batch = args.per_device_train_batch_size * max(args.world_size, 1)
    if len(dataset) < batch:
        raise ValueError(
            f"`{name}` has {len(dataset)} examples but one batch takes {batch} "
            f"(`per_device_train_batch_size` x processes) and `dataloader_drop_last=True` drops the rest: lower "
            "`per_device_train_batch_size` or set `dataloader_drop_last=False`."
        )


def is_iterable(dataset: Any) -> bool:
    """Whether a dataset is iterable-only (streaming): it has no length and no random access."""
    return dataset is not None and not hasattr(dataset, "__len__")


def first_rows(dataset: Any, count: int = SAMPLE_ROWS) -> list[dict[str, Any]]:
    """The first `count` rows of an iterable dataset, as a list (what the input checks of a stream look at)."""
    return list(itertools.islice(iter(dataset), count))


def check_streaming(dataset: Any, args: Any) -> None:
    """Refuse an epoch count for a dataset without a length: its steps must be counted with `max_steps`."""
    if is_iterable(dataset) and args.max_steps <= 0:
        per = "in total" if args.trgl_mode == "parallel" else "per module; multi-lap runs split it over the laps"
        raise ValueError(
            f"`train_dataset` is an iterable (streaming) dataset without a length, so `num_train_epochs="
            f"{args.num_train_epochs}` cannot be counted: give `max_steps` instead ({per})."
        )


__all__ = [
    "check_batch_fits",
    "check_model_inputs",
    "check_sequence_lengths",
    "check_streaming",
    "first_rows",
    "is_iterable",
    "max_sequence_length",
]
