"""Entity-level precision, recall and F1 of IOB2 tag sequences, as `seqeval` computes them by default (CoNLL's
`conlleval`), in plain Python: no `seqeval` package and no `evaluate.load` (which fetches its metric scripts).

An entity is a maximal run of tags of one type that starts at a `B-` tag, or at an `I-` tag that does not continue an
entity of its type (seqeval's default, lenient mode: `O I-PER I-PER` is one PER entity). A predicted entity counts
as correct when its type, start and end all match a true one.
"""

from __future__ import annotations

from collections.abc import Sequence

Span = tuple[str, int, int]


def is_iob2(names: Sequence[str]) -> bool:
    """Whether label names are IOB2 tags: each `"O"`, `"B-<type>"` or `"I-<type>"`, with at least one `B-` tag."""
    if not names:
        return False
    tagged = all(name == "O" or (name[:2] in ("B-", "I-") and len(name) > 2) for name in names)
    return tagged and any(name.startswith("B-") for name in names)


def entity_spans(tags: Sequence[str]) -> list[Span]:
    """The entities of one tag sequence, as `(type, start, end)` with `end` exclusive.

    Example:
    ```python
    >>> entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"])
    [('PER', 0, 2), ('LOC', 3, 4), ('LOC', 4, 5), ('ORG', 5, 6)]
    ```
    """
    spans: list[Span] = []
    kind: str | None = None
    start = 0
    for index, tag in enumerate([*tags, "O"]):
        prefix, _, current = tag.partition("-") if tag[:2] in ("B-", "I-") else ("O", "", "")
        if kind is not None and (prefix != "I" or current != kind):
            spans.append((kind, start, index))
            kind = None
        if prefix == "B" or (prefix == "I" and kind is None):
            kind, start = current, index
    return spans


def entity_scores(truth: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences (0 where a denominator is 0, as seqeval).

    Args:
        truth (`Sequence[Sequence[str]]`): the true tags of each sentence (labelled tokens only).
        predicted (`Sequence[Sequence[str]]`): the predicted tags, aligned with `truth`.

    Returns:
        `dict[str, float]`: `{"precision": ..., "recall": ..., "f1": ...}`.
    """
    true_spans = {(row, *span) for row, tags in enumerate(truth) for span in entity_spans(tags)}
    guessed = {(row, *span) for row, tags in enumerate(predicted) for span in entity_spans(tags)}
    correct = len(true_spans & guessed)
    precision = correct / len(guessed) if guessed else 0.0
    recall = correct / len(true_spans) if true_spans else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


__all__ = ["entity_scores", "entity_spans", "is_iob2"]
