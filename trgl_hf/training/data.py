"""Dataset helpers: the offline digits dataset of the quick start, and label checks run before training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..modeling.tasks import Task, get_task

LABEL_COLUMNS = ("labels", "label", "label_ids")


def load_digits_dataset(seed: int = 0, validation_fraction: float = 0.15, test_fraction: float = 0.15):
    """scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes) as a stratified `DatasetDict`.

    Shipped with scikit-learn, so it needs no network. Pixels are scaled to [0, 1] and standardised with the
    training split's mean and standard deviation.

    Args:
        seed (`int`, *optional*, defaults to 0): seed of the stratified split.
        validation_fraction (`float`, *optional*, defaults to 0.15): share of the validation split.
        test_fraction (`float`, *optional*, defaults to 0.15): share of the test split.

    Returns:
        `datasets.DatasetDict`: `train`, `validation` and `test` splits with columns `pixel_values`
        (float32, `(1, 8, 8)`) and `labels`, formatted as torch tensors.

    Example:
    ```python
    >>> splits = load_digits_dataset()
    >>> splits["train"][0]["pixel_values"].shape
    torch.Size([1, 8, 8])
    ```
    """
    from datasets import DatasetDict

    load_digits, train_test_split = _sklearn_digits()
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    splits = _stratified_splits(
        train_test_split, images, digits.target.astype(np.int64), seed, validation_fraction, test_fraction
    )
    mean, std = float(splits["train"][0].mean()), float(splits["train"][0].std())
    parts = {name: _standardised_dataset(*split, mean, std) for name, split in splits.items()}
    return DatasetDict(**parts).with_format("torch")


def _sklearn_digits() -> tuple[Callable, Callable]:
    """scikit-learn's `load_digits` and `train_test_split`, or an error saying how to install it."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "`load_digits_dataset` reads scikit-learn's bundled digits: install it with "
            "`pip install 'trgl_hf[recipes]'` (or `pip install scikit-learn`)."
        ) from error
    return load_digits, train_test_split


def _stratified_splits(
    train_test_split: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    seed: int,
    validation_fraction: float,
    test_fraction: float,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{"train", "validation", "test"}: (images, labels)`, each split stratified by label."""
    train_images, held_images, train_labels, held_labels = train_test_split(
        images, labels, test_size=validation_fraction + test_fraction, stratify=labels, random_state=seed
    )
    validation_images, test_images, validation_labels, test_labels = train_test_split(
        held_images,
        held_labels,
        test_size=test_fraction / (validation_fraction + test_fraction),
        stratify=held_labels,
        random_state=seed,
    )
    return {
        "train": (train_images, train_labels),
        "validation": (validation_images, validation_labels),
        "test": (test_images, test_labels),
    }


def _standardised_dataset(images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> Any:
    """A `Dataset` of `pixel_values` standardised with `mean` and `std` and `labels` as the ten digit classes."""
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    features = Features(
        {
            "pixel_values": Sequence(Sequence(Sequence(Value("float32")))),
            "labels": ClassLabel(names=[str(d) for d in range(10)]),
        }
    )
    normalised = ((images - mean) / std).astype(np.float32)
    return Dataset.from_dict({"pixel_values": normalised, "labels": labels}, features=features)


def find_label_column(dataset: Any) -> str | None:
    """Name of the label column of a `datasets.Dataset` (or the label key of a map-style dataset's items)."""
    names = getattr(dataset, "column_names", None)
    if names is None:
        try:
            first = dataset[0]
        except (IndexError, KeyError, TypeError):
            return None
        names = list(first) if isinstance(first, dict) else []
    return next((name for name in LABEL_COLUMNS if name in names), None)


def check_labels(
    dataset: Any,
    num_labels: int,
    name: str = "train_dataset",
    task: Task | str = "single_label_classification",
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
) -> None:
    """Raise a `ValueError` when a dataset is empty, has no labels, or holds labels its task cannot train on.

    Args:
        dataset: a `datasets.Dataset` or a map-style torch dataset of dicts.
        num_labels (`int`): number of classes of the model (`vocab_size` for language models).
        name (`str`, *optional*): how to call the dataset in the message.
        task ([`Task`] or `str`, *optional*): the model's task (see `trgl_hf.modeling.tasks`), which decides what
            labels are.
        collate (`Callable`, *optional*): the data collator; when the rows hold no labels, a batch of the first rows
            is collated and the labels it makes are checked (`DataCollatorForLanguageModeling`, a transform).
    """
    if dataset is None:
        return
    task = get_task(task) if isinstance(task, str) else task
    if len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: pass a dataset with at least one example.")
    column = find_label_column(dataset)
    if column is None and collate is not None:
        made = collated_labels(dataset, collate)
        if made is not None:
            task.check_labels(made, "labels", num_labels, f"{name} (labels made by the data collator)")
            return
    if column is None:
        raise ValueError(
            f"`{name}` has no labels: add a column named 'labels' or 'label' holding class indices in [0, "
            f"{num_labels}), or a data collator that makes `labels` (e.g. `DataCollatorForLanguageModeling`)."
        )
    task.check_labels(dataset, column, num_labels, name)


def collated_labels(dataset: Any, collate: Callable, rows: int = 64) -> list[dict[str, Any]] | None:
    """The `labels` the collator makes from the first `rows` rows, one dict per example; None when it makes none."""
    batch = collate([dataset[index] for index in range(min(rows, len(dataset)))])
    labels = batch.get("labels") if hasattr(batch, "get") else None
    return None if labels is None else [{"labels": label} for label in labels]
