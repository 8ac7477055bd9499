"""The runner of the documentation's code blocks (`docs/code_blocks.py`) finds every ```python block, skips only the
ones marked `<!-- not-run: why -->`, runs a page's blocks in one namespace, and a broken block fails its page (the
real blocks run in tests/integration/test_docs_code_blocks.py)."""

import importlib.util
from pathlib import Path

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
open("written.txt", "w").write("in an empty folder")
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
    assert [(block.line, block.not_run) for block in found] == [(5, "needs the Hub"), (9, None), (18, None)]
    assert found[2].code == "y = x / 2\n"


def test_a_pages_blocks_share_one_namespace_in_an_empty_folder_and_a_broken_block_fails_its_page(tmp_path):
    runner = code_blocks()
    good, broken = tmp_path / "good.md", tmp_path / "broken.md"
    good.write_text(PAGE.format(divisor=2))
    broken.write_text(PAGE.format(divisor=0))
    results = runner.run_here([good, broken])
    assert results[str(good)] is None
    assert "ZeroDivisionError" in results[str(broken)] and f"{broken}:18" in results[str(broken)]
    assert not (tmp_path / "written.txt").exists()


def test_every_page_has_few_skipped_blocks_each_with_a_reason():
    runner = code_blocks()
    found = [block for page in PAGES for block in runner.blocks(page)]
    skipped = [block for block in found if block.not_run is not None]
    assert len(found) >= 8 and len(skipped) <= 3, [(b.path.name, b.line) for b in skipped]
    assert all(len(block.not_run) > 10 for block in skipped)
