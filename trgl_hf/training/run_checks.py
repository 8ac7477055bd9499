"""What `TRGLTrainer` checks before anything trains: its arguments against the model, the datasets against the task
and the inputs the model reads, and what it tells the user about settings that change what is written."""

from __future__ import annotations

import logging
from typing import Any

from transformers import Trainer

from ..distributed.fsdp import check_fsdp_setup, fsdp_settings
from ..modeling.modeling_trgl import TRGLModel
from .data import check_labels
from .guards import check_hub_credentials, check_one_world, check_writable
from .hf_internals import collator_without_unused_columns
from .input_checks import (
    check_batch_fits,
    check_model_inputs,
    check_sequence_lengths,
    check_streaming,
    first_rows,
    is_iterable,
)
from .phases import plan_phases
from .training_args import TRGLTrainingArguments

logger = logging.getLogger(__name__)


def checked_arguments(model: Any, args: TRGLTrainingArguments | None) -> TRGLTrainingArguments:
    """The trainer's arguments (defaults when `None`), once the model is known to be a `TRGLModel`.

    Raises:
        `ValueError`: naming how to wrap the model, or which arguments class to use.
    """
    if not isinstance(model, TRGLModel):
        raise ValueError(
            f"TRGLTrainer trains a TRGLModel, got {type(model).__name__}: wrap it first with "
            "`TRGLModel.from_base(model, TRGLConfig(...))`."
        )
    if args is None:
        return TRGLTrainingArguments(output_dir="trgl_output")
    if not isinstance(args, TRGLTrainingArguments):
        raise ValueError("TRGLTrainer needs `TRGLTrainingArguments` (they add `trgl_mode` and friends).")
    return args


def check_trainer_inputs(model: Any, args: TRGLTrainingArguments | None, kwargs: dict) -> TRGLTrainingArguments:
    """Before `Trainer.__init__`: the model, the arguments (defaults when `None`, `label_smoothing_factor` adopted by
    the TRGL loss), the output folder, a streamed training set and `optimizers=` (`kwargs`: the Trainer's others)."""
    args = checked_arguments(model, args)
    adopt_label_smoothing(model, args)
    check_writable(args.output_dir)
    check_streaming(kwargs.get("train_dataset"), args)
    check_given_optimizers(kwargs.get("optimizers"), model, args, fsdp=fsdp_settings(args) is not None)
    return args


def check_trainer_setup(trainer: Trainer) -> None:
    """After `Trainer.__init__`: one process group, the FSDP setup, the stage numbers to save."""
    check_one_world(trainer.args)
    check_fsdp_setup(trainer.fsdp_settings, trainer.accelerator, trainer.model)
    check_stage_selection(trainer.args, trainer.model.num_modules)


def named_datasets(trainer: Trainer) -> dict[str, Any]:
    """The training set and every evaluation set, by the argument name a user gave them under."""
    eval_sets = trainer.eval_dataset if isinstance(trainer.eval_dataset, dict) else {"": trainer.eval_dataset}
    return {
        "train_dataset": trainer.train_dataset,
        **{f"eval_dataset[{key!r}]" if key else "eval_dataset": value for key, value in eval_sets.items()},
    }


def check_datasets(trainer: Trainer) -> None:
    """Before training: every dataset's labels, sequence lengths and inputs fit the model, the batch fits the
    training set, and pushing to the Hub has credentials (streams are checked on their first rows)."""
    model, args = trainer.model, trainer.args
    num_labels = model.backbone.config.vocab_size if model.task.is_language_model else model.config.num_labels
    check_streaming(trainer.train_dataset, args)
    collate = collator_without_unused_columns(trainer, trainer.data_collator, description="label check")
    for name, dataset in named_datasets(trainer).items():
        dataset = first_rows(dataset) if is_iterable(dataset) else dataset
        check_labels(dataset, num_labels, name, model.task, collate)
        check_sequence_lengths(dataset, model, name)
        check_model_inputs(dataset, model, name)
    check_batch_fits(trainer.train_dataset, args, "train_dataset")
    check_hub_credentials(args, trainer.hub_api)


def announce_settings(trainer: Trainer) -> None:
    """Say what the run does differently from what a user may expect: the heads' learning rate and warm-up, stages
    written without PEFT adapters, stages written without a processor."""
    settings, config, args = trainer.head_settings, trainer.model.config, trainer.args
    if settings.source != "as given":
        logger.info("Auxiliary heads at learning_rate x %g with %d head-only warm-up steps per phase: %s.",
                    settings.lr_multiplier, settings.warmup_steps, settings.source)  # fmt: skip
    if config.peft_config and config.aux_head != "native" and args.saves_any_stage():
        logger.info(
            "LoRA base with aux_head=%r: stages are written with the adapters merged, not also as PEFT adapters "
            "(an adapter applies to the native truncated model, whose head is not this one). Pass "
            "aux_head='native' to TRGLConfig for adapter exports.", config.aux_head,
        )  # fmt: skip
    if trainer.processing_class is None and args.saves_any_stage():
        logger.warning(
            "No `processing_class` (tokenizer / image processor) was given to TRGLTrainer: the stage folders will "
            "hold none, and `pipeline(model=stage_dir)` cannot run them. Pass the one used to prepare the data."
        )


def check_stage_selection(args: TRGLTrainingArguments, num_modules: int) -> None:
    """Refuse `trgl_save_stages` numbers the model has no stage for."""
    selection = args.trgl_save_stages
    if isinstance(selection, tuple) and selection[-1] > num_modules:
        raise ValueError(
            f"`trgl_save_stages={list(selection)}` but the model has {num_modules} modules: give stage numbers in "
            f"1..{num_modules}, or 'all' / 'last' / 'none'."
        )


def check_given_optimizers(optimizers: Any, model: Any, args: TRGLTrainingArguments, fsdp: bool = False) -> None:
    """`optimizers=(optimizer, scheduler)` drives one training loop; a run of several phases (sequential or multilap
    with K > 1, multilap laps) builds a fresh optimizer for each phase, so the pair is refused there.

    Raises:
        `ValueError`: naming `optimizer_cls_and_kwargs`, which builds the optimizer of each phase.
    """
    if not optimizers or all(item is None for item in optimizers):
        return
    if fsdp:
        raise ValueError(
            "`optimizers=(optimizer, scheduler)` holds the unsharded parameters, which FSDP replaces: pass "
            "`optimizer_cls_and_kwargs=(optimizer_class, kwargs)` instead (built over the sharded parameters)."
        )
    phases = len(plan_phases(model.num_modules, args.trgl_mode, args.trgl_laps, args.num_train_epochs, args.max_steps,
                             use_cache=False))  # fmt: skip
    if phases > 1:
        raise ValueError(
            f"`optimizers=(optimizer, scheduler)` gives one optimizer for one training loop, but this "
            f"{args.trgl_mode} run trains {phases} phases, each with a fresh optimizer over its own module: pass "
            "`optimizer_cls_and_kwargs=(optimizer_class, kwargs)` instead (and `lr_scheduler_type`), or use "
            "`trgl_mode='parallel'`."
        )


def adopt_label_smoothing(model: Any, args: TRGLTrainingArguments) -> None:
    """`label_smoothing_factor` (Trainer's argument) becomes the TRGL loss's label smoothing, the one every module's
    task loss applies, as `Trainer`'s label smoother would apply it to the model's loss.

    Raises:
        `ValueError`: when `TRGLConfig.label_smoothing` already says something else, or the task has no cross-entropy.
    """
    factor = args.label_smoothing_factor
    if not factor:
        return
    config = model.config
    if config.label_smoothing and config.label_smoothing != factor:
        raise ValueError(
            f"`label_smoothing_factor={factor}` but the model's TRGLConfig has `label_smoothing="
            f"{config.label_smoothing}`: set only one of them (they are the same setting)."
        )
    if not model.task.uses_cross_entropy:
        raise ValueError(
            f"`label_smoothing_factor` applies to cross-entropy; the {model.task.name} task has none: set it to 0."
        )
    config.label_smoothing = factor
