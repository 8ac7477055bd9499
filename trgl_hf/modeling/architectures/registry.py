"""The architectures trgl_hf trains exactly, and the answer for every other model.

Each supported architecture is one [`ArchitectureSpec`], keyed by its `model_type`: which cutter cuts it, where its
blocks are, how each block adds its branches to the residual stream (what the transport term penalises), what runs
after the last block, and which task classes are supported. A model is cut only when its `model_type` and class are
registered and its configuration passes the entry's checks; any other model is refused before anything is trained,
with a message that names it, says why, and lists what is supported.

Registering a new architecture: add one entry to its kind's tuple in `families/` (`ENCODERS`, `DECODERS`, `VISION`;
for a new block structure, a cutter file too) and its row to the cases of `tests/unit/modeling/architectures/`; the
parametrised tests of `test_registry.py` then check its transport term against hooks on the uncut model and its
stages against the TRGL model's heads.
"""

from __future__ import annotations

from torch import nn

from .families import ENTRIES
from .families.common import CAUSAL_LM, MASKED_LM, TOKEN_CLASSIFICATION
from .families.refusals import KNOWN_REFUSALS
from .spec import ArchitectureSpec

_ENTRIES = ENTRIES

REGISTRY: dict[str, ArchitectureSpec] = {model_type: spec for spec in _ENTRIES for model_type in spec.model_types}


def _families_with(task: str) -> str:
    names = [spec.name for spec in _ENTRIES if task in spec.classes.values()]
    return ", ".join(names) if names else "no family yet"


CLASS_HINTS = {
    "ForMaskedLM": "masked-LM heads are not registered for this family (they are trained for "
    f"{_families_with(MASKED_LM)})",
    "WithTeacher": "its two heads (class token and distillation token) are averaged; use `DeiTForImageClassification`",
    "ForTokenClassification": "token classification is not registered for this family (it is trained for "
    f"{_families_with(TOKEN_CLASSIFICATION)})",
    "ForQuestionAnswering": "question answering is not a supported task",
    "ForMultipleChoice": "multiple choice is not a supported task",
}


def supported_architectures() -> dict[str, list[str]]:
    """Every supported architecture's task classes, by `model_type`.

    Returns:
        `dict[str, list[str]]`: e.g. `{"bert": ["BertForSequenceClassification"], ...}`.

    Example:
    ```python
    >>> from trgl_hf import supported_architectures
    >>> "GPT2LMHeadModel" in supported_architectures()["gpt2"]
    True
    ```
    """
    return {model_type: sorted(spec.classes) for model_type, spec in REGISTRY.items()}


def _supported_text() -> str:
    names = ", ".join(spec.name for spec in _ENTRIES)
    return (f"{len(_ENTRIES)} architectures ({names}); their task classes: `trgl_hf.supported_architectures()` or "
            "docs/architectures.md")  # fmt: skip


def architecture_of(model: nn.Module) -> ArchitectureSpec:
    """The registry entry of a task model, or a `ValueError` naming it, saying why, and listing what is supported.

    Args:
        model (`nn.Module`): a transformers task model (or this library's CIFAR ResNet).

    Returns:
        [`ArchitectureSpec`]

    Raises:
        `ValueError`: the model is not registered, its class is not a supported task class, or its configuration
            cannot be trained exactly.
    """
    class_name = type(model).__name__
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    spec = REGISTRY.get(model_type)
    supported = f"Supported: {_supported_text()}."
    if spec is None:
        reason = KNOWN_REFUSALS.get(model_type, "its architecture is not in trgl_hf's registry of architectures whose "
                                    "residual branches and heads are verified")  # fmt: skip
        what = f"model_type {model_type!r}" if model_type else "not a transformers model"
        raise ValueError(f"trgl_hf cannot train {class_name} ({what}): {reason}. {supported}")
    if class_name not in spec.classes:
        hint = next((text for suffix, text in CLASS_HINTS.items() if suffix in class_name), None)
        if hint is None and getattr(model, "base_model", model) is model:
            hint = "it is a bare backbone, and trgl_hf needs the task model (its head is copied into every module)"
        hint = hint or "its task head is not one trgl_hf reproduces exactly"
        raise ValueError(
            f"trgl_hf cannot train {class_name}: {hint}. {spec.name} is supported through "
            f"{', '.join(sorted(spec.classes))}."
        )
    reason = spec.check(config) if spec.check is not None else None
    decoder_classifier = class_name.endswith("ForSequenceClassification") and CAUSAL_LM in spec.classes.values()
    if reason is None and decoder_classifier and getattr(config, "pad_token_id", None) is None:
        reason = ("a decoder classifier reads the last non-padding token and needs `config.pad_token_id` "
                  "(set it, e.g. to the tokenizer's pad or eos token id)")  # fmt: skip
    if reason is not None:
        raise ValueError(f"trgl_hf cannot train this {class_name}: {reason}.")
    return spec


def architecture_named(class_name: str, model_type: str) -> ArchitectureSpec:
    """The registry entry for a saved TRGL model's base class (`config.base_config`)."""
    spec = REGISTRY.get(model_type)
    if spec is None or class_name not in spec.classes:
        raise ValueError(f"{class_name} (model_type {model_type!r}) is not a supported architecture.")
    return spec


def support_table() -> str:
    """The guide's table of supported architectures (`docs/architectures.md`; a test keeps the page equal to it)."""
    rows = ["| architecture | task classes | what the transport term penalises |", "| --- | --- | --- |"]
    for spec in _ENTRIES:
        classes = ", ".join(f"`{name}`" for name in sorted(spec.classes))
        rows.append(f"| {spec.name} | {classes} | {spec.penalised} |")
    return "\n".join(rows)


__all__ = [
    "REGISTRY",
    "ArchitectureSpec",
    "architecture_named",
    "architecture_of",
    "support_table",
    "supported_architectures",
]
