"""Writing a stage folder atomically: the exported model, its processor, `trgl_stage.json` and its model card (the
format itself is `stage_folders`'; the atomic writes are `atomic_files`')."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from .atomic_files import atomic_directory
from .model_cards import stage_card_facts, stage_model_card
from .stage_folders import STAGE_CARD_FILE, stage_dirname, write_stage_metadata


def save_stage(
    model: PreTrainedModel,
    directory: str | os.PathLike,
    stage: int,
    num_stages: int,
    info: dict[str, Any],
    processor: Any = None,
    write_extra: Callable[[Path], dict[str, Any]] | None = None,
) -> Path:
    """Save an exported stage atomically: weights, config (and generation config), remote code if any, the processor
    the model was trained with, `trgl_stage.json` and the model card: the files `Trainer.save_model` writes, plus the
    run facts.

    Args:
        model (`PreTrainedModel`): the stage model from [`TRGLModel.export_stage`].
        directory (`str` or `os.PathLike`): destination folder, e.g. `output_dir/stage-02`.
        stage (`int`): 1-based stage index.
        num_stages (`int`): number of modules K.
        info (`dict`): run facts for `trgl_stage.json` and the model card (see [`stage_model_card`]).
        processor (*optional*): the tokenizer, image processor, feature extractor or processor given to the trainer
            as `processing_class`; saved with its own `save_pretrained`.
        write_extra (*optional*): called with the staging folder to write more files (e.g. the PEFT adapter); what
            it returns is added to `trgl_stage.json`.

    Returns:
        `Path`: the written folder.
    """
    with atomic_directory(directory) as staging:
        model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        extra = write_extra(staging) if write_extra is not None else {}
        write_stage_metadata(staging, stage, num_stages, {**info, **extra})
        stage_model_card(stage_card_facts(staging), str(directory)).save(staging / STAGE_CARD_FILE)
    return Path(directory)


__all__ = ["save_stage", "stage_dirname"]  # stage_dirname: stage_folders' own, still imported from here by trainer.py
