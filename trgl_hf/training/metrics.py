"""Per-module evaluation metrics, computed with numpy (no network-bound `evaluate.load`)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction

from ..modeling.tasks import TASKS, Task

MetricFunction = Callable[[EvalPrediction], dict[str, float]]


def accuracy(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Top-1 accuracy of `(num_examples, num_labels)` logits against integer labels.

    Args:
        eval_prediction (`EvalPrediction`): logits and labels.

    Returns:
        `dict[str, float]`: `{"accuracy": ...}`.
    """
    logits, labels = np.asarray(eval_prediction.predictions), np.asarray(eval_prediction.label_ids)
    return {"accuracy": float((logits.argmax(axis=-1) == labels).mean())}


def to_numpy(value: Any) -> Any:
    """An array (or a list of arrays, one per batch) as numpy; tensors are detached and moved to the CPU."""
    if isinstance(value, (list, tuple)):
        return [to_numpy(item) for item in value]
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return value


def concatenated(value: Any) -> np.ndarray:
    """Batches left unconcatenated (`eval_do_concat_batches=False`) as one array; an array as it is."""
    return np.concatenate([np.asarray(item) for item in value]) if isinstance(value, list) else np.asarray(value)


def module_view(predictions: Any, index: int, axis: int = 1) -> Any:
    """Module `index`'s logits, shaped as the predictions are: one array, or one array per batch (`axis`: where the
    modules are; 2 for token classification's `(examples, length, modules, labels)`)."""
    if isinstance(predictions, list):
        return [np.asarray(batch).take(index, axis=axis) for batch in predictions]
    return np.asarray(predictions).take(index, axis=axis)


class PerModuleMetrics:
    """Turn a single-head `compute_metrics` into one that scores every module's head.

    Predictions arrive as `(num_examples, num_modules, num_labels)` (or one such array per batch with
    `eval_do_concat_batches=False`); for token classification as `(num_examples, length, num_modules, num_labels)`
    with labels `(num_examples, length)` (-100 on padding and unlabelled tokens), so that batches of different
    lengths are padded as `Trainer` pads them. Each metric `name` of module k is reported as `module_{k}_{name}`
    (1-based), with the head's loss (the task's own: cross-entropy, binary cross-entropy or MSE) as
    `module_{k}_loss`; the last module's metrics are also reported under their plain names, and `best_module` is the
    module with the best value of
    `selection_metric`. `compute_metrics` receives `EvalPrediction(predictions, label_ids, inputs, losses)` for each
    head, as `Trainer` would give it for that head (`inputs` and `losses` when `include_for_metrics` asks for them;
    `losses` are the last module's).

    With `batch_eval_metrics=True`, `compute_metrics` is called batch by batch (`compute_result=True` at the last)
    on one copy of itself per module (`copy.deepcopy`), so the modules' running statistics stay apart.

    Args:
        compute_metrics (`Callable`, *optional*): metrics of one head; defaults to the task's (accuracy for
            single-label classification, micro F1 and exact match for multi-label, MSE for regression).
        selection_metric (`str`, *optional*): metric used to pick `best_module` (`metric_for_best_model` without
            `eval_`); defaults to the task's, or to the lowest loss when a custom `compute_metrics` does not report
            it. The result is reported as `best_module_{metric}` under the metric actually used.
        task ([`Task`], *optional*): the heads' task; defaults to single-label classification.
        greater_is_better (`bool`, *optional*): whether a larger `selection_metric` is better (default: the task's
            for its own metric, else False for losses / errors and True otherwise, as `TrainingArguments` decides).
        label_smoothing (`float`, *optional*, defaults to 0.0): the label smoothing of the heads' cross-entropy, so
            that `module_{k}_loss` is the loss the modules train on.
    """

    def __init__(
        self,
        compute_metrics: MetricFunction | None = None,
        selection_metric: str | None = None,
        task: Task | None = None,
        greater_is_better: bool | None = None,
        label_smoothing: float = 0.0,
    ):
        self.task = task or TASKS["single_label_classification"]
        self.custom = compute_metrics
        self.compute_metrics = compute_metrics or self.task.default_metrics
        self.selection_metric = selection_metric or self.task.selection_metric
        self.explicit_selection = selection_metric is not None
        if greater_is_better is None:
            greater_is_better = (
                self.task.greater_is_better
                if selection_metric is None
                else not (self.selection_metric.endswith("loss") or self.selection_metric in ("mse", "perplexity"))
            )
        self.greater_is_better = greater_is_better
        self.label_smoothing = label_smoothing
        self._stream: _BatchStream | None = None

    def __call__(self, eval_prediction: EvalPrediction, compute_result: bool | None = None) -> dict[str, float]:
        if compute_result is not None:  # batch_eval_metrics
            return self._batch(eval_prediction, compute_result)
        predictions = to_numpy(eval_prediction.predictions)
        labels = concatenated(to_numpy(eval_prediction.label_ids))
        whole = concatenated(predictions)
        per_module = []
        axis = self.task.module_axis
        for index in range(whole.shape[axis]):
            head = EvalPrediction(predictions=module_view(predictions, index, axis),
                                  label_ids=eval_prediction.label_ids, inputs=eval_prediction.inputs,
                                  losses=eval_prediction.losses)  # fmt: skip
            metrics = dict(self.compute_metrics(head))
            metrics["loss"] = self.task.numpy_loss(whole.take(index, axis=axis), labels, self.label_smoothing)
            per_module.append(metrics)
        return self.summarise(per_module)

    def _batch(self, eval_prediction: EvalPrediction, compute_result: bool) -> dict[str, float]:
        """One batch of `batch_eval_metrics`: per-module losses (and, for the task's own metrics, the logits) are
        accumulated; each module's copy of `compute_metrics` sees its head's logits."""
        predictions = np.asarray(to_numpy(eval_prediction.predictions))
        labels = np.asarray(to_numpy(eval_prediction.label_ids))
        axis = self.task.module_axis
        if self._stream is None:
            self._stream = _BatchStream(predictions.shape[axis], self.custom, axis)
        stream = self._stream
        stream.add(predictions, labels, [self.task.numpy_loss(predictions.take(index, axis=axis), labels,
                                                               self.label_smoothing)
                                         for index in range(predictions.shape[axis])])  # fmt: skip
        results = stream.call_custom(eval_prediction, compute_result)
        if not compute_result:
            return {}
        self._stream = None
        per_module = []
        for index in range(predictions.shape[axis]):
            if self.custom is None:
                head = EvalPrediction(predictions=stream.module_logits(index), label_ids=stream.all_labels())
                metrics = dict(self.task.default_metrics(head))
            else:
                metrics = dict(results[index] or {})
            metrics["loss"] = stream.loss_sums[index] / max(stream.rows, 1)
            per_module.append(metrics)
        return self.summarise(per_module)

    def summarise(self, per_module: list[dict[str, float]]) -> dict[str, float]:
        """`module_{k}_{name}` for every module's metrics, the last module's under plain names, and `best_module`."""
        results: dict[str, float] = {}
        scores = []
        for index, metrics in enumerate(per_module):
            for name, value in metrics.items():
                results[f"module_{index + 1}_{name}"] = value
            selection, greater = self.selection_metric, self.greater_is_better
            if selection not in metrics and not self.explicit_selection:  # a custom compute_metrics: lowest loss
                selection, greater = "loss", False
            if selection not in metrics:
                raise ValueError(
                    f"The best module is chosen by {self.selection_metric!r} (`metric_for_best_model`), which the "
                    f"metrics do not report (they report {sorted(metrics)}): set `metric_for_best_model` to one of "
                    "them, or return it from `compute_metrics`."
                )
            value = metrics[selection]
            scores.append(value if greater else -value)
        results.update({name: value for name, value in per_module[-1].items() if name != "loss"})
        best = int(np.argmax(scores))
        results["best_module"] = best + 1
        results[f"best_module_{selection}"] = float(results[f"module_{best + 1}_{selection}"])
        return results


class _BatchStream:
    """What `batch_eval_metrics` accumulates over one evaluation: row-weighted loss sums per module, the logits when
    the task's own metrics need them, and one copy of a custom `compute_metrics` per module."""

    def __init__(self, num_modules: int, custom: MetricFunction | None, axis: int = 1):
        self.axis = axis
        self.rows, self.loss_sums = 0, [0.0] * num_modules
        self.logits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.custom = custom
        self.copies = [copy.deepcopy(custom) for _ in range(num_modules)] if custom is not None else []

    def add(self, predictions: np.ndarray, labels: np.ndarray, losses: list[float]) -> None:
        rows = len(labels)
        self.rows += rows
        self.loss_sums = [total + loss * rows for total, loss in zip(self.loss_sums, losses)]
        if self.custom is None:
            self.logits.append(predictions)
            self.labels.append(labels)

    def module_logits(self, index: int) -> np.ndarray:
        """Module `index`'s logits of every batch (per-token logits padded to the longest batch, as `Trainer` pads)."""
        logits = [batch.take(index, axis=self.axis) for batch in self.logits]
        if self.axis == 1:
            return np.concatenate(logits)
        return _pad_and_concatenate(logits, padding=-100.0)

    def all_labels(self) -> np.ndarray:
        """The labels of every batch (per-token labels padded with -100 to the longest batch)."""
        return np.concatenate(self.labels) if self.axis == 1 else _pad_and_concatenate(self.labels, padding=-100)

    def call_custom(self, batch: EvalPrediction, compute_result: bool) -> list[Any]:
        """Each module's copy of `compute_metrics` on its head's logits, as `Trainer` passes them (tensors)."""
        return [
            metric(EvalPrediction(predictions=batch.predictions[(slice(None),) * self.axis + (index,)],
                                  label_ids=batch.label_ids, inputs=batch.inputs, losses=batch.losses),
                   compute_result=compute_result)
            for index, metric in enumerate(self.copies)
        ]  # fmt: skip


def _pad_and_concatenate(arrays: list[np.ndarray], padding: float) -> np.ndarray:
    """Batches of per-token arrays `(rows, length, ...)` padded along the length to the longest and concatenated."""
    length = max(array.shape[1] for array in arrays)
    padded = []
    for array in arrays:
        widths = [(0, 0), (0, length - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
        padded.append(np.pad(array, widths, constant_values=padding))
    return np.concatenate(padded)


class PerModuleLanguageModelMetrics:
    """Loss and perplexity of every module's LM head (causal or masked), averaged per scored token.

    Predictions arrive as `(num_batches, 2, num_modules)`: each batch's summed token NLL per module (next-token for
    a causal LM, masked tokens for a masked LM) and its number of scored tokens. Reports `module_{k}_loss` and
    `module_{k}_perplexity` (1-based), `perplexity` of the last module, and `best_module`, the module with the lowest
    loss. With `batch_eval_metrics=True` the batches' sums
    are added up until `compute_result=True`.
    """

    def __init__(self):
        self._sums: np.ndarray | None = None

    def __call__(self, eval_prediction: EvalPrediction, compute_result: bool | None = None) -> dict[str, float]:
        predictions = concatenated(to_numpy(eval_prediction.predictions)).astype(np.float64)
        sums = predictions.reshape(-1, 2, predictions.shape[-1]).sum(axis=0)
        if compute_result is not None:  # batch_eval_metrics
            self._sums = sums if self._sums is None else self._sums + sums
            if not compute_result:
                return {}
            sums, self._sums = self._sums, None
        means = sums[0] / np.maximum(sums[1], 1.0)
        results: dict[str, float] = {}
        for index, mean in enumerate(means):
            results[f"module_{index + 1}_loss"] = float(mean)
            results[f"module_{index + 1}_perplexity"] = float(np.exp(mean))
        results["perplexity"] = float(np.exp(means[-1]))
        best = int(np.argmin(means))
        results["best_module"] = best + 1
        results["best_module_perplexity"] = float(np.exp(means[best]))
        return results
