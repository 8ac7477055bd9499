"""Every private transformers / accelerate API the training side relies on, in one place (the model side's are in
`trgl_hf.modeling.hf_internals`, checked here too).

`TRGLTrainer` runs one `Trainer.train()` per phase and trains modules with their own backward, so it needs a few
things the public API does not offer. They were checked against the versions in `CHECKED_VERSIONS` (pinned in
`constraints.txt`; a test keeps the three equal). On import, each is looked up: an upgrade that removes one fails here,
loudly, with the name of what is missing, instead of silently skipping an override.

- `Accelerator._optimizers / _schedulers / _models`: emptied between phases, so each phase prepares a fresh
  optimizer, scheduler and distributed wrapper (otherwise the second phase keeps the first one's optimizer).
- `Trainer._remove_unused_columns`, `Trainer._get_collator_with_removed_columns`, `Trainer._prepare_inputs`: the
  prefix cache feeds the model exactly what a training batch would hold.
- `Trainer._get_dataloader`, `Trainer._get_train_sampler`, `Trainer._train_batch_size`: a phase's training batches
  (its prefix cache, its lap's examples) come from the Trainer's own loader, without changing `train_dataset`.
- `Trainer._clip_grad_norm` (overridden: each module is clipped on its own), `Trainer._push_from_checkpoint`
  (overridden: intermediate checkpoints are not pushed, finished stages are) and `Trainer._save_checkpoint`
  (overridden: never a checkpoint of weights a non-finite loss has reached; the run's progress is recorded).
- `Trainer.model_wrapped`: reset to the model before each phase, so no previous phase's wrapper is reused.
- `transformers.integrations.integration_utils.default_logdir`: the TensorBoard folder name, pinned under the run's
  folder for the whole run.
- `Trainer.is_distributed_loading_by_transformers`: set when the trainer shards the model with FSDP2 itself
  (`trgl_hf.distributed.fsdp`), so that `_prepare_for_training` neither wraps the sharded model (DDP, FSDP) nor shards
  it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import accelerate
import transformers
from accelerate import Accelerator
from transformers import Trainer
from transformers.integrations.integration_utils import default_logdir

from ..modeling.hf_internals import missing_private_api as missing_model_api

CHECKED_VERSIONS = {"transformers": "5.24.0", "accelerate": "1.15.0"}
TRAINER_METHODS = ("_remove_unused_columns", "_get_collator_with_removed_columns", "_prepare_inputs",
                   "_get_dataloader", "_get_train_sampler")  # fmt: skip
TRAINER_ATTRIBUTES = ("_train_batch_size",)  # set in `Trainer.__init__`
OVERRIDDEN_TRAINER_METHODS = ("_clip_grad_norm", "_push_from_checkpoint", "_save_checkpoint")
ACCELERATOR_LISTS = ("_optimizers", "_schedulers", "_models")
TRAINER_FLAGS = ("is_distributed_loading_by_transformers",)  # read by `Trainer._prepare_for_training`


def check_private_api() -> None:
    """Raise an `ImportError` naming every private API this module needs that the installed versions lack."""
    missing = [f"transformers.Trainer.{name}" for name in (*TRAINER_METHODS, *OVERRIDDEN_TRAINER_METHODS)
               if not callable(getattr(Trainer, name, None))]  # fmt: skip
    assigned = Accelerator.__init__.__code__.co_names  # the lists are created in __init__
    missing += [f"accelerate.Accelerator.{name}" for name in ACCELERATOR_LISTS if name not in assigned]
    set_by_trainer = Trainer.__init__.__code__.co_names
    missing += [f"transformers.Trainer.{name}" for name in TRAINER_ATTRIBUTES if name not in set_by_trainer]
    read = Trainer._prepare_for_training.__code__.co_names if hasattr(Trainer, "_prepare_for_training") else ()
    missing += [f"transformers.Trainer.{name}" for name in TRAINER_FLAGS if name not in read]
    missing += missing_model_api()
    if missing:
        raise ImportError(
            f"trgl_hf needs {', '.join(missing)}, which transformers {transformers.__version__} / accelerate "
            f"{accelerate.__version__} do not have (checked against {CHECKED_VERSIONS}): install the versions of "
            "`constraints.txt`."
        )


check_private_api()


def reset_accelerator(accelerator: Accelerator) -> None:
    """Forget the optimizers, schedulers and models prepared for the previous phase."""
    for name in ACCELERATOR_LISTS:
        getattr(accelerator, name).clear()


def set_wrapped_model(trainer: Trainer, model: Any) -> None:
    """Make `model` the trainer's `model_wrapped` (what `Trainer.train()` wraps and saves), forgetting a previous
    phase's wrapper."""
    trainer.model_wrapped = model


def default_logging_dir() -> str:
    """The folder name the Trainer's loggers (TensorBoard) write under by default: `runs/<date>_<host>`."""
    return default_logdir()


def remove_unused_columns(trainer: Trainer, dataset: Any, description: str) -> Any:
    """The dataset without the columns the model's forward does not take (as the Trainer's dataloaders do)."""
    return trainer._remove_unused_columns(dataset, description=description)


def collator_without_unused_columns(trainer: Trainer, collator: Callable, description: str) -> Callable:
    """The collator wrapped to drop unused columns of map-style datasets (as the Trainer's dataloaders do)."""
    return trainer._get_collator_with_removed_columns(collator, description=description)


def training_dataloader(trainer: Trainer, dataset: Any, collate: Callable | None = None) -> Any:
    """The Trainer's training `DataLoader` (its sampler, batch size, workers, seeding, accelerator preparation) over
    `dataset`; with `collate`, the rows are model inputs already: `collate` stacks them, no column is removed."""
    if collate is None:
        return trainer._get_dataloader(dataset=dataset, description="Training", batch_size=trainer._train_batch_size,
                                       sampler_fn=trainer._get_train_sampler, is_training=True)  # fmt: skip
    saved = trainer.data_collator, trainer.args.remove_unused_columns
    trainer.data_collator, trainer.args.remove_unused_columns = collate, False
    try:
        return training_dataloader(trainer, dataset)
    finally:
        trainer.data_collator, trainer.args.remove_unused_columns = saved


def prepare_inputs(trainer: Trainer, batch: dict[str, Any]) -> dict[str, Any]:
    """A batch moved to the trainer's device, as `Trainer.training_step` prepares it."""
    return trainer._prepare_inputs(batch)


__all__ = [
    "CHECKED_VERSIONS",
    "check_private_api",
    "collator_without_unused_columns",
    "default_logging_dir",
    "prepare_inputs",
    "remove_unused_columns",
    "reset_accelerator",
    "set_wrapped_model",
    "training_dataloader",
]
