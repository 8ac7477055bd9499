"""Every refused input of `docs/bad_inputs.py` (the table behind docs/errors.md) raises a ValueError that names the
field, before the first optimizer step, and leaves nothing in the output folder that loads."""

import importlib.util
import sys
from pathlib import Path

import pytest

from trgl_hf import TRGLTrainer

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location("bad_inputs", ROOT / "docs" / "bad_inputs.py")
bad_inputs = importlib.util.module_from_spec(_spec)
sys.modules["bad_inputs"] = bad_inputs  # dataclasses look their module up
_spec.loader.exec_module(bad_inputs)
DESCRIPTIONS = [case.description for case in bad_inputs.cases(Path("/nonexistent"))]


def test_the_table_has_at_least_forty_rows():
    assert len(DESCRIPTIONS) >= 40


@pytest.mark.parametrize("index", range(len(DESCRIPTIONS)), ids=DESCRIPTIONS)
def test_bad_input_is_refused_before_training_naming_the_field(index, tmp_path, monkeypatch):
    case = bad_inputs.cases(tmp_path)[index]
    if not case.trains_first:

        def no_training(*args, **kwargs):
            raise AssertionError(f"{case.description}: an optimizer step ran before the input was refused")

        monkeypatch.setattr(TRGLTrainer, "training_step", no_training)
    with pytest.raises(ValueError) as error:
        case.trigger()
    assert case.field in str(error.value), str(error.value)
    if not case.trains_first:
        written = [p for p in tmp_path.rglob("*") if p.name.startswith(("stage-", "trgl-progress", "checkpoint-"))]
        assert not written, written
