"""Run the ```python blocks of Markdown files, so that the documentation's code cannot rot.

The blocks of one file run in order in one fresh Python process, in an empty temporary folder, offline
(`HF_HUB_OFFLINE=1`): a later block may use what an earlier one defined, as in a notebook. A block right after a
line `<!-- not-run: why -->` is skipped and reported (for code that needs the Hub or several processes).

python docs/code_blocks.py README.md docs/*.md   # runs every block; exit status 1 if one fails
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

BLOCK = re.compile(r"^(?:<!-- not-run: (?P<why>.+?) -->\n)?```python\n(?P<code>.*?)^```$", re.M | re.S)


class Block(NamedTuple):
    path: Path
    line: int
    code: str
    not_run: str | None


def blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, in order, with the reason when one is marked not-run."""
    text = path.read_text()
    return [Block(path, text.count("\n", 0, m.start("code")) + 1, m.group("code"), m.group("why"))
            for m in BLOCK.finditer(text)]  # fmt: skip


def script(runnable: list[Block]) -> str:
    """One program running the blocks in order, each announced on stderr so that a failure names its block."""
    parts = ["import sys"]
    for block in runnable:
        parts.append(f"print({f'--- {block.path.name}, block at line {block.line}'!r}, file=sys.stderr, flush=True)")
        parts.append(f"exec(compile({block.code!r}, {f'{block.path}:{block.line}'!r}, 'exec'))")
    return "\n".join(parts) + "\n"


def run(path: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the runnable blocks of `path` in a fresh process and an empty folder; the process's result."""
    runnable = [block for block in blocks(path) if block.not_run is None]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as folder:
        return subprocess.run([sys.executable, "-c", script(runnable)], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip


def main(paths: list[str]) -> int:
    failed = 0
    for name in paths:
        path = Path(name).resolve()
        for block in blocks(path):
            if block.not_run:
                print(f"{name}:{block.line}: not run ({block.not_run})")
        result = run(path)
        print(f"{name}: {'ok' if result.returncode == 0 else 'FAILED'}")
        if result.returncode:
            failed += 1
            print(result.stderr[-3000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
