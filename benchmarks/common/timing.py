"""Timing through the trainers themselves: `TRGLTrainer.train()` for TRGL, `transformers.Trainer.train()` for
end-to-end (and checkpointing) on the same model and data.

`StepTimes` is a `TrainerCallback` that records the wall and CPU time of every optimizer step, from the Trainer's
`on_step_begin` to its `on_step_end` (forward, backward, clipping, optimizer step, zero_grad; the data loading
happens before `on_step_begin`), one list per `train()` call of the underlying Trainer, i.e. one per TRGL phase.
The first `warmup` steps of every phase (fresh optimizer: its state is created there) are left out.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from trgl_hf import TRGLTrainer, TRGLTrainingArguments


class StepTimes(TrainerCallback):
    """Wall and CPU time (`time.process_time`: all threads of the process) of every step, per training loop: per
    `train()` call of a `Trainer`, per phase of a `TRGLTrainer` run (`on_phase_begin`)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.phases: list[dict[str, list[float]]] = []
        self._begin = (0.0, 0.0)
        self._phased = False

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_begin(self, args, state, control, **kwargs):
        if not self._phased:
            self.phases.append({"wall": [], "cpu": []})

    def on_phase_begin(self, args, state, control, **kwargs):
        self._phased = True
        self.phases.append({"wall": [], "cpu": []})

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._begin = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.phases[-1]["wall"].append(time.perf_counter() - self._begin[0])
        self.phases[-1]["cpu"].append(time.process_time() - self._begin[1])


class FixedBatch(torch.utils.data.Dataset):
    """The rows of one batch (`inputs` and `labels`): with `per_device_train_batch_size` = its size, every training
    step sees exactly this batch (shuffled)."""

    def __init__(self, inputs: dict[str, torch.Tensor], labels: torch.Tensor):
        self.columns = {**inputs, "labels": labels}
        self.size = len(labels)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: column[index] for name, column in self.columns.items()}


def training_args(
    output_dir: str | Path,
    steps: int,
    batch_size: int,
    *,
    optim: str = "sgd",
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    device: str = "cpu",
    trgl_mode: str | None = None,
    prefix_cache: str = "always",
    **extra: Any,
) -> TrainingArguments:
    """Arguments of a timing run: `steps` steps (per module in sequential mode), constant lr, no clipping, no
    logging, saving or evaluation. `optim="sgd"` is SGD with momentum 0.9; `"adamw_torch"` is AdamW."""
    common = dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=lr,
        weight_decay=weight_decay,
        optim=optim,
        optim_args="momentum=0.9" if optim == "sgd" else None,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        seed=0,
        remove_unused_columns=False,
        **extra,
    )
    if trgl_mode is None:
        return TrainingArguments(**common)
    return TRGLTrainingArguments(**common, trgl_mode=trgl_mode, trgl_prefix_cache=prefix_cache, trgl_save_stages=False)


class SegmentCheckpointTrainer(Trainer):
    """`Trainer` whose loss runs the CIFAR ResNet with `torch.utils.checkpoint` over the segments of `split`."""

    def __init__(self, *args: Any, split: list[int], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.split = split

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from .steps import checkpointed_forward

        logits = checkpointed_forward(model, inputs["pixel_values"], self.split)
        loss = F.cross_entropy(logits, inputs["labels"])
        return (loss, logits) if return_outputs else loss


def make_trainer(model, args: TrainingArguments, dataset, split: list[int] | None = None, **kwargs: Any) -> Trainer:
    """`TRGLTrainer` for TRGL arguments, else `Trainer` (`SegmentCheckpointTrainer` when `split` is given); the
    end-of-training metrics printout is removed (the benchmarks log their own lines)."""
    if isinstance(args, TRGLTrainingArguments):
        trainer = TRGLTrainer(model=model, args=args, train_dataset=dataset, **kwargs)
    elif split is not None:
        trainer = SegmentCheckpointTrainer(model=model, args=args, train_dataset=dataset, split=split, **kwargs)
    else:
        trainer = Trainer(model=model, args=args, train_dataset=dataset, **kwargs)
    trainer.pop_callback(PrinterCallback)
    return trainer


def timed_train(trainer: Trainer, warmup: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Run `trainer.train()` and return the step times of every phase (after `warmup` steps) and `train_runtime`."""
    timer = StepTimes(device)
    trainer.add_callback(timer)
    try:
        output = trainer.train()
    finally:
        trainer.remove_callback(timer)
    phases = [{"wall_s": p["wall"][warmup:], "cpu_s": p["cpu"][warmup:]} for p in timer.phases]
    return {"phases": phases, "train_runtime_s": round(output.metrics.get("train_runtime", 0.0), 3)}


def summary(times: list[float], how: str = "median") -> float | None:
    if not times:
        return None
    return round(statistics.median(times) if how == "median" else statistics.mean(times), 4)
