"""Run the ```python blocks of Markdown files, so that the documentation's code cannot rot.

The blocks of one page run in order in one namespace, in an empty temporary folder, offline (`HF_HUB_OFFLINE=1`): a
later block may use what an earlier one defined, as in a notebook. Every page gets its own namespace and folder; all
pages run in one fresh Python process (importing torch and transformers once). A block right after a line
`<!-- not-run: why -->` is skipped and reported (for code that needs the Hub).

python docs/code_blocks.py README.md docs/*.md   # runs every block; exit status 1 if one fails
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
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


def run_blocks(page: list[Block]) -> None:
    """Run the runnable blocks of one page in order, in one new namespace, in the current folder."""
    namespace = {"__name__": "__main__"}
    for block in page:
        if block.not_run is None:
            exec(compile(block.code, f"{block.path}:{block.line}", "exec"), namespace)


def run_here(paths: list[Path]) -> dict[str, str | None]:
    """Run every page in this process, each in a new empty folder: {page: None, or the traceback of its failure}."""
    results, start = {}, os.getcwd()
    for path in paths:
        with tempfile.TemporaryDirectory() as folder:
            os.chdir(folder)
            try:
                run_blocks(blocks(path))
                results[str(path)] = None
            except BaseException:  # noqa: BLE001 - a block may even call sys.exit: report it as the page's failure
                results[str(path)] = traceback.format_exc()
            finally:
                os.chdir(start)
    return results


def run(paths: list[Path], timeout: float = 1200) -> dict[str, str | None]:
    """Run the pages in one fresh process, offline: {page: None, or why it failed}."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "results.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--json", str(report), *map(str, paths)]
        process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if not report.is_file():
            return {str(path): f"the runner died (exit status {process.returncode}):\n{process.stderr[-3000:]}"
                    for path in paths}  # fmt: skip
        return json.loads(report.read_text())


def main(argv: list[str]) -> int:
    if argv[:1] == ["--json"]:  # the child process of `run`
        Path(argv[1]).write_text(json.dumps(run_here([Path(p).resolve() for p in argv[2:]])))
        return 0
    paths = [Path(name).resolve() for name in argv]
    for block in (block for path in paths for block in blocks(path) if block.not_run):
        print(f"{block.path.name}:{block.line}: not run ({block.not_run})")
    results = run(paths)
    for path, error in results.items():
        print(f"{Path(path).name}: {'ok' if error is None else 'FAILED'}")
        if error is not None:
            print(error[-3000:])
    return 1 if any(error is not None for error in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
