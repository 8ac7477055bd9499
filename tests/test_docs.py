"""The documentation's table of refused inputs is generated from the real errors and kept up to date."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_error_table_is_up_to_date():
    result = subprocess.run([sys.executable, "docs/bad_inputs.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-500:]
    assert (ROOT / "docs" / "errors.md").read_text().count("| `ValueError` |") >= 15


def test_readme_lists_every_supported_architecture():
    from trgl_hf.modeling.architectures.registry import support_table

    assert support_table() in (ROOT / "README.md").read_text()
