"""The documentation says what the code does: the support table is the registry's, the README's test command is the one
CI runs, and CI builds the guide (the table of refused inputs and the code blocks are checked in
tests/integration/: they run scripts)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_guide_lists_every_supported_architecture():
    from trgl_hf.modeling.architectures.registry import support_table

    assert support_table() in (ROOT / "docs" / "architectures.md").read_text()


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"Set up and run the tests.*?```bash\n(.+?)\n```", readme, re.S).group(1)
    assert "python -m pytest tests/unit tests/integration" in command
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_is_a_landing_page_whose_links_reach_the_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 150
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links and all((ROOT / link).is_file() for link in links), links


def test_ci_builds_the_guide_strictly_and_every_page_is_in_its_navigation():
    assert any(line.startswith("mkdocs build --strict") for line in (ROOT / ".ci" / "run").read_text().splitlines())
    nav = (ROOT / "mkdocs.yml").read_text()
    assert sorted(page.name for page in (ROOT / "docs").glob("*.md")) == sorted(
        re.findall(r": ([\w-]+\.md)$", nav, re.M)
    )


def test_readme_counts_the_supported_architectures():
    from trgl_hf import supported_architectures

    readme = (ROOT / "README.md").read_text()
    count = int(re.search(r"for the (\d+) architectures of the \[support table\]", readme)[1])
    assert count == len(supported_architectures())
