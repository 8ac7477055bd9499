"""Task classes added to families registered elsewhere, by task: `{model_type: {class name: task}}` per table, merged
into the family's `ArchitectureSpec.classes` by `families/__init__.py`."""

from __future__ import annotations

TASK_CLASSES: dict[str, dict[str, str]] = {}
"""`model_type` -> the extra task classes of that family (e.g. its `*ForTokenClassification`)."""
