"""Report writing: atomic JSON / Markdown files, prose templates and matplotlib figures.

The prose of each report lives in one file, `benchmarks/templates/<report>.md`: named sections (a line
`<!-- name -->` starts one) holding `str.format` templates, filled with `text(report, name, **values)`.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file (an interrupted run never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def write_json(path: Path, payload: Any, indent: int = 1) -> None:
    write_atomically(path, json.dumps(payload, indent=indent, default=str) + "\n")


@functools.cache
def sections(report: str) -> dict[str, str]:
    """The named template sections of `templates/<report>.md`."""
    parts = re.split(r"^<!-- ([\w-]+) -->\n", (TEMPLATES / f"{report}.md").read_text(), flags=re.M)
    return {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts), 2)}


def text(report: str, section: str, /, **values: Any) -> str:
    """Section `name` of the report's template, filled with `values` (`str.format` syntax)."""
    return sections(report)[section].format(**values)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
