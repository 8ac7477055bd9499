"""What one phase's training loop is given: its own copy of the run's arguments (its folder, epochs and steps) and its
training data (its prefix cache; in multilap, its lap's share of one seeded order). The run's arguments and dataset
are never changed."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset
from transformers import Trainer

from .input_checks import is_iterable
from .phases import Phase, lap_order
from .training_args import TRGLTrainingArguments

logger = logging.getLogger(__name__)


def phase_training_data(trainer: Trainer, phase: Phase) -> Any:
    """The data `phase` trains on: the prefix cache of its frozen modules' outputs (when cached), in multilap its lap's
    share (`trainer.args` are the phase's)."""
    data, (_, reason) = trainer.train_dataset, trainer.prefix_cache_decision()
    if phase.cached_from is not None:
        logger.info("%s: caching the frozen prefix's outputs once (%s).", phase.name, reason)
        with torch.random.fork_rng(devices=[]):  # its loaders draw seeds: the uncached run does not
            data = trainer.prefix_caches.build(trainer, phase, data)
    elif min(phase.modules) > 0 and trainer.args.trgl_mode != "parallel":
        logger.info("%s: recomputing the frozen prefix every step (%s).", phase.name, reason)
    return lap_data(data, phase, trainer.args) if phase.laps > 1 else data


def phase_arguments(args: TRGLTrainingArguments, phase: Phase, root: Path) -> TRGLTrainingArguments:
    """A copy of the run's `args` with the phase's `output_dir` (its folder under the run), epochs and steps."""
    phase_args = copy.copy(args)
    phase_args.output_dir = str(phase.output_dir(root))
    phase_args.num_train_epochs, phase_args.max_steps = phase.num_train_epochs, phase.max_steps
    return phase_args


def examples_per_lap(phase: Phase, args: TRGLTrainingArguments) -> int:
    """How many examples a lap of `max_steps` optimizer steps reads, over every process."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
    return phase.max_steps * per_step


def lap_data(dataset: Any, phase: Phase, phase_args: TRGLTrainingArguments) -> Any:
    """Multilap: the lap trains on the next examples of one uninterrupted sequence of seeded epochs (lap 2 starts where
    lap 1 stopped), read in that order, instead of restarting the sampler at the first epoch every lap. Sets
    `phase_args` to read them in order (one pass)."""
    if is_iterable(dataset):  # a stream: lap l reads on from where lap l-1 stopped, where it can skip
        if hasattr(dataset, "skip"):
            return dataset.skip((phase.lap - 1) * examples_per_lap(phase, phase_args))
        if phase.lap == 2:
            logger.warning("The iterable train_dataset has no `skip`: every lap reads it from its beginning.")
        return dataset
    if phase.max_steps > 0:
        per_lap = examples_per_lap(phase, phase_args)
    else:
        per_lap = max(1, round(phase.num_train_epochs * len(dataset)))
        phase_args.num_train_epochs = 1
    seed = phase_args.data_seed if phase_args.data_seed is not None else phase_args.seed
    indices = lap_order(len(dataset), seed, (phase.lap - 1) * per_lap, per_lap)
    phase_args.train_sampling_strategy = "sequential"
    return dataset.select(indices) if hasattr(dataset, "select") else Subset(dataset, indices)
