"""The run object: where each phase starts, the run's totals, and what resuming refuses."""

import json

import pytest
from transformers.trainer_utils import TrainOutput

from trgl_hf.training.phases import plan_phases
from trgl_hf.training.run import TrainingRun, finished_checkpoint_output


def new_run(tmp_path):
    phases = plan_phases(3, "sequential", 1, 1.0, 4, use_cache=False)
    return TrainingRun(tmp_path, phases, "fingerprint", {}, writer=True)


def test_phases_start_where_the_previous_ones_ended_and_the_totals_add_up(tmp_path):
    run = new_run(tmp_path)
    run.begin(False)
    first, second, third = run.phases
    assert run.position(first, True).step_offset == 0
    run.add_phase(TrainOutput(4, 2.0, {"train_runtime": 1.0, "train_samples_per_second": 8.0}), epochs=0.5)
    run.add_phase(TrainOutput(2, 1.0, {"train_runtime": 3.0, "train_samples_per_second": 4.0}), epochs=0.25)
    position = run.position(third, False)
    assert (position.step_offset, position.epoch_offset) == (6, 0.75)
    summary = run.summary(total_flos=0.0)
    assert summary["train_loss"] == pytest.approx((4 * 2.0 + 2 * 1.0) / 6)
    assert summary["train_samples_per_second"] == pytest.approx((8.0 + 12.0) / 4.0)
    assert (summary["epoch"], summary["train_runtime"]) == (0.75, 4.0)


def test_resuming_an_empty_folder_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="holds no run to resume.*train without it"):
        new_run(tmp_path).begin(True)


def test_a_checkpoint_at_its_last_step_is_finished_and_an_earlier_one_is_not(tmp_path):
    state = {"global_step": 4, "max_steps": 4, "log_history": [{"loss": 1.0, "step": 2}, {"loss": 3.0, "step": 4}]}
    (tmp_path / "trainer_state.json").write_text(json.dumps(state))
    _, output = finished_checkpoint_output(str(tmp_path))
    assert (output.global_step, output.training_loss) == (4, 2.0)
    (tmp_path / "trainer_state.json").write_text(json.dumps({**state, "global_step": 3}))
    assert finished_checkpoint_output(str(tmp_path)) is None
