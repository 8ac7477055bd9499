"""Every private transformers API the model side (`modeling/`, `models/`) relies on, in one place.

The training side's are in `trgl_hf.training.hf_internals`, which checks both lists against the pinned versions when
trgl_hf is imported. This module imports only transformers (a saved model's remote code carries it) and raises nothing
at import: a bundle loaded under another transformers version keeps working as far as it can.

- `SubConfigSpec` (`transformers.configuration_utils`): declares `TRGLConfig.base_config` as a nested config.
- `module._is_hf_initialized`: marks the user's modules as initialised, so `post_init` does not initialise them again.
- `PreTrainedConfig._auto_class`: cleared while `TRGLModel.save_pretrained` writes, so transformers does not copy
  `configuration_trgl.py` alone into the folder (the remote code is written by trgl_hf).
- `PreTrainedModel._get_files_timestamps` (overridden by `TRGLModel`): the remote-code files are left out of the
  snapshot, so `save_pretrained(push_to_hub=True)` uploads them too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

OVERRIDDEN_MODEL_METHODS = ("_get_files_timestamps",)
"""Private `PreTrainedModel` methods `TRGLModel` overrides."""
CONFIG_ATTRIBUTES = ("_auto_class",)


def missing_private_api() -> list[str]:
    """The private APIs of this module that the installed transformers lacks (checked by
    `trgl_hf.training.hf_internals.check_private_api`)."""
    from transformers import PreTrainedModel

    missing = [f"transformers.PreTrainedModel.{name}" for name in OVERRIDDEN_MODEL_METHODS
               if not callable(getattr(PreTrainedModel, name, None))]  # fmt: skip
    return missing + [f"transformers.PreTrainedConfig.{name}" for name in CONFIG_ATTRIBUTES
                      if not hasattr(PreTrainedConfig, name)]  # fmt: skip


def mark_initialized(module: Any) -> None:
    """Tell `PreTrainedModel.post_init` that `module` is initialised already (it keeps its weights)."""
    module._is_hf_initialized = True


@contextmanager
def auto_class_cleared(config: PreTrainedConfig) -> Iterator[None]:
    """`config._auto_class` is None inside the block (transformers then copies no config file of its own into a saved
    folder); afterwards an attribute set only for the block is removed again, one the config held stays None."""
    had_auto_class = "_auto_class" in config.__dict__
    config._auto_class = None
    try:
        yield
    finally:
        if not had_auto_class:
            del config._auto_class


__all__ = [
    "OVERRIDDEN_MODEL_METHODS",
    "SubConfigSpec",
    "auto_class_cleared",
    "mark_initialized",
    "missing_private_api",
]
