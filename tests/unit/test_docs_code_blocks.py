"""The runner of the documentation's code blocks (`docs/code_blocks.py`) finds every ```python block, skips only the
ones marked `<!-- not-run: why -->`, and a broken block fails (the blocks themselves run in
tests/integration/test_docs_code_blocks.py)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_blocks():
    spec = importlib.util.spec_from_file_location("code_blocks", ROOT / "docs" / "code_blocks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAGE = """# A page

<!-- not-run: needs the Hub -->
```python
raise RuntimeError("never run")
```

```python
x = 1
```

```bash
echo not python
```

```python
y = x / {divisor}
```
"""


def test_blocks_are_found_in_order_with_their_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(PAGE.format(divisor=2))
    found = code_blocks().blocks(page)
    assert [(block.line, block.not_run) for block in found] == [(5, "needs the Hub"), (9, None), (17, None)]
    assert found[2].code == "y = x / 2\n"


def test_the_blocks_of_a_page_share_one_namespace_and_a_broken_block_fails(tmp_path):
    runner = code_blocks()
    page = tmp_path / "page.md"
    page.write_text(PAGE.format(divisor=2))
    exec(runner.script([b for b in runner.blocks(page) if b.not_run is None]), {})
    page.write_text(PAGE.format(divisor=0))
    with pytest.raises(ZeroDivisionError):
        exec(runner.script([b for b in runner.blocks(page) if b.not_run is None]), {})


def test_every_page_has_few_skipped_blocks_each_with_a_reason():
    runner = code_blocks()
    found = [block for page in PAGES for block in runner.blocks(page)]
    skipped = [block for block in found if block.not_run is not None]
    assert len(found) >= 8 and len(skipped) <= 3, [(b.path.name, b.line) for b in skipped]
    assert all(len(block.not_run) > 10 for block in skipped)
