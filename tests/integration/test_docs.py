"""The documentation's table of refused inputs is generated from the real errors and kept up to date (a script run
in a subprocess: `python docs/bad_inputs.py --check`)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_error_table_is_up_to_date():
    result = subprocess.run([sys.executable, "docs/bad_inputs.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:] + result.stdout[-500:]
    assert (ROOT / "docs" / "errors.md").read_text().count("| `ValueError` |") >= 15
