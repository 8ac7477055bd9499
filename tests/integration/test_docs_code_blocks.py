"""Every ```python block of the README and of the guide runs (`docs/code_blocks.py`: the blocks of one page in order,
in one namespace and an empty folder, offline; all pages in one fresh process, one test); blocks marked
`<!-- not-run: why -->` are reported as skipped."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
spec = importlib.util.spec_from_file_location("code_blocks", ROOT / "docs" / "code_blocks.py")
code_blocks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(code_blocks)

RUNNABLE = [page for page in PAGES if any(b.not_run is None for b in code_blocks.blocks(page))]
SKIPPED = [block for page in PAGES for block in code_blocks.blocks(page) if block.not_run is not None]


def test_the_code_blocks_of_every_page_run():
    results = code_blocks.run(RUNNABLE)
    failed = {page: why for page, why in results.items() if why is not None}
    assert results.keys() == {str(page) for page in RUNNABLE}
    assert not failed, "\n\n".join(f"{page}:\n{why[-4000:]}" for page, why in failed.items())


@pytest.mark.parametrize("block", SKIPPED, ids=lambda block: f"{block.path.name}:{block.line}")
def test_blocks_marked_not_run(block):
    pytest.skip(f"not-run in the Markdown: {block.not_run}")


def test_a_broken_block_fails_the_runner(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text("```python\nfrom trgl_hf import TRGLConfig\n\nTRGLConfig(num_modules=0)\n```\n")
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "code_blocks.py"), str(page)], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 1 and "broken.md: FAILED" in result.stdout and "num_modules" in result.stdout
