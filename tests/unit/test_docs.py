"""The README says what the code does: the support table is the registry's, and its test command is the one CI runs
(the table of refused inputs is checked in tests/integration/test_docs.py: it runs a script)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_lists_every_supported_architecture():
    from trgl_hf.modeling.architectures.registry import support_table

    assert support_table() in (ROOT / "README.md").read_text()


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"Set up and run the tests.*?```bash\n(.+?)\n```", readme, re.S).group(1)
    assert "python -m pytest tests/unit tests/integration" in command
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
