"""`output_dir/checkpoint-N` markers: what `get_last_checkpoint` finds, which run they resume, and that they are kept
to one."""

import pytest
from transformers.trainer_utils import get_last_checkpoint

from trgl_hf.training.run_markers import check_marker, read_marker, write_marker


def test_one_marker_named_by_the_run_step_is_kept(tmp_path):
    write_marker(tmp_path, 4, "run-a", "phases/module-01/checkpoint-4")
    (tmp_path / "checkpoint-7").mkdir()  # a folder of the user's, not a marker: left alone
    latest = write_marker(tmp_path, 12, "run-a", "module-02 finished")
    assert get_last_checkpoint(str(tmp_path)) == str(latest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-12", "checkpoint-7"]
    assert read_marker(latest) == {"run_fingerprint": "run-a", "global_step": 12, "point": "module-02 finished"}
    assert read_marker(tmp_path / "checkpoint-7") is None


def test_a_marker_of_another_run_is_refused(tmp_path):
    marker = write_marker(tmp_path, 3, "run-a", "module-01 finished")
    check_marker(marker, "run-a")
    with pytest.raises(ValueError, match="another configuration"):
        check_marker(marker, "run-b")
