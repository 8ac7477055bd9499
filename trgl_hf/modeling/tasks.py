"""What a model is trained to do: its loss, its metrics, the labels it accepts and the Auto class of its stages.

A task is decided once, from the base model's class and its configuration's `problem_type`, the way transformers
decides it, and stored in `TRGLConfig.task`:

| task | loss (as transformers computes it) | labels | metrics |
| --- | --- | --- | --- |
| `single_label_classification` | cross-entropy | class indices `(batch,)` | accuracy |
| `multi_label_classification` | BCE with logits | multi-hot `(batch, num_labels)` | micro F1, exact match |
| `regression` | mean squared error | floats `(batch,)` or `(batch, num_labels)` | MSE |
| `causal_lm` | next-token cross-entropy (shifted, -100 ignored) | token ids `(batch, length)` | perplexity |
| `token_classification` | per-token cross-entropy (-100 ignored) | class ids `(batch, length)` | accuracy, entity F1 |
| `masked_lm` | cross-entropy over the masked tokens (-100 elsewhere) | token ids `(batch, length)` | perplexity |

Where transformers infers the classification type from the labels' dtype at every step (`problem_type=None`), this
library decides before training: `num_labels == 1` is regression, otherwise single-label classification, and float
labels are then refused with a message that says to set `problem_type`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction

from .entities import entity_scores, is_iob2

MetricFunction = Callable[[EvalPrediction], dict[str, float]]

AUTO_CLASS_BY_SUFFIX = {
    "ForSequenceClassification": ("AutoModelForSequenceClassification", "text-classification"),
    "ForImageClassification": ("AutoModelForImageClassification", "image-classification"),
    "ForCausalLM": ("AutoModelForCausalLM", "text-generation"),
    "LMHeadModel": ("AutoModelForCausalLM", "text-generation"),
    "ForTokenClassification": ("AutoModelForTokenClassification", "token-classification"),
    "ForMaskedLM": ("AutoModelForMaskedLM", "fill-mask"),
}


def stage_loader(architecture: str | None) -> tuple[str, str]:
    """The Auto class and `pipeline_tag` of a stage of class `architecture` (e.g. `"GPT2LMHeadModel"`).

    Returns:
        `tuple[str, str]`: e.g. `("AutoModelForCausalLM", "text-generation")`; image classification for the
        library's own stage classes.
    """
    for suffix, loader in AUTO_CLASS_BY_SUFFIX.items():
        if architecture and architecture.endswith(suffix):
            return loader
    return AUTO_CLASS_BY_SUFFIX["ForImageClassification"]


def _labels_array(dataset: Any, column: str) -> list[np.ndarray]:
    if hasattr(dataset, "with_format") and hasattr(dataset, "column_names"):
        values = dataset.with_format(None)[column]
    else:
        values = [dataset[i][column] for i in range(len(dataset))]
    arrays = []
    for value in values:
        if isinstance(value, torch.Tensor):
            value = value.numpy()
        try:
            arrays.append(np.asarray(value))
        except ValueError as error:
            raise ValueError(f"Labels of unequal lengths cannot be trained: {error}") from error
    return arrays


@dataclass(frozen=True)
class Task:
    """The training objective of every auxiliary head, and how its results are scored.

    Args:
        name (`str`): one of `TASK_NAMES`.
        selection_metric (`str`): metric (without the `module_k_` prefix) that picks the best module.
        greater_is_better (`bool`): whether a larger `selection_metric` is better.
    """

    name: str
    selection_metric: str
    greater_is_better: bool

    @property
    def is_language_model(self) -> bool:
        """Whether the heads predict a token of the vocabulary at every position (causal or masked LM): labels are
        token ids, the loss is chunked in training, and evaluation sums each module's token losses instead of
        gathering vocabulary-sized logits."""
        return self.name in ("causal_lm", "masked_lm")

    @property
    def shifts_labels(self) -> bool:
        """Whether position t is scored against `labels[:, t + 1]` (causal LM) rather than `labels[:, t]`."""
        return self.name == "causal_lm"

    @property
    def per_token(self) -> bool:
        """Whether the labels are one per token, `(batch, length)` (language models, token classification)."""
        return self.is_language_model or self.name == "token_classification"

    @property
    def uses_cross_entropy(self) -> bool:
        """Whether the loss is a cross-entropy (so that `label_smoothing` applies)."""
        return self.name in ("single_label_classification", "causal_lm", "token_classification", "masked_lm")

    @property
    def module_axis(self) -> int:
        """The axis of the modules in the predictions the trainer gathers: `(examples, modules, labels)`, or
        `(examples, length, modules, labels)` for token classification (padded along the length between batches)."""
        return 2 if self.name == "token_classification" else 1

    def count_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The number of scored tokens of a batch of language-model labels (not -100; shifted for a causal LM)."""
        return (labels[:, 1:] if self.shifts_labels else labels).ne(-100).sum()

    def for_labels(self, id2label: dict[int, str] | None) -> Task:
        """This task for a model whose labels are named `id2label` (token classification reads the entity tags)."""
        return self

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """The head's loss, in float32, as the transformers task model computes it for this problem type."""
        logits = logits.float()
        if self.name in ("masked_lm", "token_classification"):
            flat = logits.reshape(-1, logits.shape[-1])
            return F.cross_entropy(flat, labels.reshape(-1), ignore_index=-100, label_smoothing=label_smoothing)
        if self.name == "causal_lm":
            shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
            shifted_labels = labels[:, 1:].reshape(-1)
            return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=-100, label_smoothing=label_smoothing)
        if self.name == "regression":
            if logits.shape[-1] == 1:
                return F.mse_loss(logits.squeeze(), labels.float().squeeze())
            return F.mse_loss(logits, labels.float())
        if self.name == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), label_smoothing=label_smoothing)

    def numpy_loss(self, logits: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0) -> float:
        """The same loss as [`Task.loss`], computed in float64 on evaluation arrays (classification tasks)."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.name == "regression":
            labels = np.asarray(labels, dtype=np.float64).reshape(logits.shape)
            return float(((logits - labels) ** 2).mean())
        if self.name == "multi_label_classification":
            labels = np.asarray(labels, dtype=np.float64)
            return float((np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))).mean())
        labels = np.asarray(labels).astype(np.int64)
        if self.name == "token_classification":  # the scored tokens only, as `loss` (labels padded with -100)
            real = labels != -100
            logits, labels = logits[real], labels[real]
            if labels.size == 0:
                return 0.0
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        nll = -log_probs[np.arange(len(labels)), labels].mean()
        return float((1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean())

    def default_metrics(self, eval_prediction: EvalPrediction) -> dict[str, float]:
        """Metrics of one head: accuracy, micro F1 and exact match, or MSE (language models are scored elsewhere)."""
        logits = np.asarray(eval_prediction.predictions, dtype=np.float64)
        labels = np.asarray(eval_prediction.label_ids)
        if self.name == "regression":
            return {"mse": float(((logits - labels.reshape(logits.shape)) ** 2).mean())}
        if self.name == "multi_label_classification":
            predicted, truth = logits > 0, labels > 0.5
            true_positives = float((predicted & truth).sum())
            denominator = float(predicted.sum() + truth.sum())
            return {
                "f1": 2.0 * true_positives / denominator if denominator else 1.0,
                "exact_match": float((predicted == truth).all(axis=-1).mean()),
            }
        return {"accuracy": float((logits.argmax(axis=-1) == labels).mean())}

    def check_labels(self, dataset: Any, column: str, num_labels: int, name: str) -> None:
        """Refuse labels this task cannot train on, with a message that says what to change.

        Args:
            dataset: a `datasets.Dataset` or a map-style dataset of dicts.
            column (`str`): the label column.
            num_labels (`int`): classes of the model (`vocab_size` for language models).
            name (`str`): how to call the dataset in the message.
        """
        arrays = _labels_array(dataset, column)
        kinds = {array.dtype.kind for array in arrays}
        if not kinds <= set("biuf"):
            raise ValueError(
                f"`{name}` has non-numeric labels ({sorted(kinds)}, e.g. {arrays[0]!r}): map them to "
                + ("class indices first (e.g. `dataset.class_encode_column`)." if self.name != "regression"
                   else "floats first.")
            )  # fmt: skip
        values = np.concatenate([array.reshape(-1) for array in arrays]).astype(np.float64)
        if self.name == "regression":
            widths = {array.size for array in arrays}
            if widths != {num_labels}:
                raise ValueError(
                    f"`{name}` has {sorted(widths)} target values per example but the regression model has "
                    f"num_labels={num_labels}: give one float per label."
                )
            if not np.isfinite(values).all():
                raise ValueError(f"`{name}` has NaN or infinite regression targets: clean or drop them.")
            return
        if self.name == "multi_label_classification":
            shapes = {array.shape for array in arrays}
            if shapes != {(num_labels,)}:
                raise ValueError(
                    f"`{name}` has labels of shape {sorted(shapes)} but a multi-label model needs one multi-hot row "
                    f"of num_labels={num_labels} values per example."
                )
            if ((values < 0) | (values > 1)).any():
                raise ValueError(f"`{name}` has multi-label targets outside [0, 1]: give 0/1 (or probabilities).")
            return
        if "f" in kinds or (not self.per_token and any(array.ndim > 0 for array in arrays)):
            raise ValueError(
                f"`{name}` has float or multi-valued labels (e.g. {arrays[0]!r}) but the model is "
                + ("a language model: give integer token ids." if self.is_language_model else
                   "a token classifier: give one class index per token (-100 where no label)." if self.per_token else
                   "a single-label classifier: for multi-hot rows build the base model with "
                   "`problem_type='multi_label_classification'`, for regression with `num_labels=1` (or "
                   "`problem_type='regression'`); otherwise give one class index per example.")
            )  # fmt: skip
        values = values[values != -100]
        if values.size == 0:
            raise ValueError(f"`{name}` has no labels to learn from (every label is -100).")
        low, high = int(values.min()), int(values.max())
        what = "vocab_size" if self.is_language_model else "num_labels"
        if low < 0 or high >= num_labels:
            raise ValueError(
                f"`{name}` has labels in [{low}, {high}] but the model has {what}={num_labels}: remap the labels "
                f"to [0, {num_labels}) or build the base model with {what}={high + 1}."
            )


@dataclass(frozen=True)
class TokenClassificationTask(Task):
    """Token classification (`*ForTokenClassification`, e.g. NER): a class per token, -100 where there is none
    (special tokens, padding, the non-first pieces of a word).

    Its metrics are the token accuracy over the labelled tokens and, when the labels are IOB2 tags (`"O"`,
    `"B-PER"`, `"I-PER"`, ...), the entity-level precision, recall and F1 of `seqeval`'s default mode, computed
    locally from `config.id2label` (see [`entity_scores`]); the best module is the one with the best entity F1 (token
    accuracy when the labels are not IOB2 tags).

    Args:
        label_names (`tuple[str, ...]`): the name of each class id (empty until [`Task.for_labels`] is called).
    """

    label_names: tuple[str, ...] = ()

    def for_labels(self, id2label: dict[int, str] | None) -> TokenClassificationTask:
        """This task with the model's label names; the best module is chosen by entity F1 for IOB2 tags."""
        names = tuple(str((id2label or {})[i]) for i in range(len(id2label or {})))
        return TokenClassificationTask(self.name, "f1" if is_iob2(names) else "accuracy", True, names)

    def default_metrics(self, eval_prediction: EvalPrediction) -> dict[str, float]:
        """Token accuracy over the labelled tokens, and entity precision / recall / F1 for IOB2 labels."""
        predicted = np.asarray(eval_prediction.predictions).argmax(axis=-1)
        labels = np.asarray(eval_prediction.label_ids).astype(np.int64)
        real = labels != -100
        metrics = {"accuracy": float((predicted[real] == labels[real]).mean()) if real.any() else 0.0}
        if is_iob2(self.label_names):
            names = self.label_names
            truth = [[names[i] for i in row[keep]] for row, keep in zip(labels, real)]
            guess = [[names[i] for i in row[keep]] for row, keep in zip(predicted, real)]
            metrics.update(entity_scores(truth, guess))
        return metrics


TASKS: dict[str, Task] = {
    "single_label_classification": Task("single_label_classification", "accuracy", True),
    "multi_label_classification": Task("multi_label_classification", "f1", True),
    "regression": Task("regression", "mse", False),
    "causal_lm": Task("causal_lm", "perplexity", False),
    "token_classification": TokenClassificationTask("token_classification", "f1", True),
    "masked_lm": Task("masked_lm", "perplexity", False),
}
TASK_NAMES = tuple(TASKS)
LEGACY_TASK_NAMES = {"classification": "single_label_classification"}


def get_task(name: str) -> Task:
    """The [`Task`] called `name` (`"classification"`, written by trgl_hf 0.1, means single-label).

    Raises:
        `ValueError`: for an unknown name, listing the known ones.
    """
    name = LEGACY_TASK_NAMES.get(name, name)
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; known tasks: {list(TASK_NAMES)}.")
    return TASKS[name]


PER_TOKEN_HEADS = ("causal_lm", "token_classification", "masked_lm")
"""Heads whose task is their class's alone (`problem_type` does not change it)."""


def task_of(model: Any, head: bool | str) -> Task:
    """Decide the task of a transformers task model from its class and configuration, as transformers does.

    Args:
        model (`PreTrainedModel`): the task model (e.g. `BertForSequenceClassification`, `GPT2LMHeadModel`).
        head (`str` or `bool`): what its class's head predicts, as the architecture registry says it
            (`"classification"`, `"causal_lm"`, `"token_classification"`, `"masked_lm"`); `True` means a causal
            language model, `False` a sequence classifier.

    Returns:
        [`Task`]: the head's task for causal LM, token classification and masked LM classes (the latter with the
        model's label names); otherwise the configuration's `problem_type`, or regression for `num_labels == 1` and
        single-label classification for more.
    """
    head = "causal_lm" if head is True else head
    if head in PER_TOKEN_HEADS:
        return TASKS[head].for_labels(getattr(model.config, "id2label", None))
    config = model.config
    problem_type = getattr(config, "problem_type", None)
    if problem_type is not None:
        return get_task(problem_type)
    return TASKS["regression" if config.num_labels == 1 else "single_label_classification"]


__all__ = ["TASKS", "TASK_NAMES", "Task", "TokenClassificationTask", "get_task", "stage_loader", "task_of"]
