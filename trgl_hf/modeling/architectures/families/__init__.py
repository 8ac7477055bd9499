"""The registry's entries, one file per kind of model: text encoders, decoders, mixtures of experts, vision; and the
task classes added to them by task (`task_classes.py`). Their order is the support table's."""

from __future__ import annotations

import dataclasses

from ..spec import ArchitectureSpec
from .decoders import DECODERS
from .encoders import ENCODERS
from .mixtures import MIXTURES
from .task_classes import TASK_CLASSES
from .vision import VISION


def with_task_classes(spec: ArchitectureSpec) -> ArchitectureSpec:
    """`spec` with the task classes `TASK_CLASSES` adds to its model types."""
    extra = {name: task for model_type in spec.model_types for name, task in TASK_CLASSES.get(model_type, {}).items()}
    return dataclasses.replace(spec, classes={**spec.classes, **extra}) if extra else spec


ENTRIES = tuple(with_task_classes(spec) for spec in (*ENCODERS, *DECODERS, *MIXTURES, *VISION))

__all__ = ["DECODERS", "ENCODERS", "ENTRIES", "MIXTURES", "VISION"]
