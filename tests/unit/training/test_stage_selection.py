"""`trgl_save_stages`: selections that name no stage are refused, and the command line takes words and numbers (the
stages real runs write: tests/integration/training/test_stage_selection.py)."""

import pytest
from transformers import HfArgumentParser

from trgl_hf import TRGLTrainingArguments
from trgl_hf.training.training_args import stage_selection


@pytest.mark.parametrize("value", ["first", [0, 2], "", []])
def test_a_selection_that_names_no_stage_is_refused(value):
    with pytest.raises(ValueError, match="'last'"):
        stage_selection(value)


def test_the_command_line_takes_words_and_numbers(tmp_path):
    parser = HfArgumentParser((TRGLTrainingArguments,))
    for given, expected in (("last", "last"), ("2,4", (2, 4)), ("False", "none"), ("all", "all")):
        (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--trgl_save_stages", given,
                                                      "--use_cpu", "true", "--report_to", "none"])  # fmt: skip
        assert args.trgl_save_stages == expected
