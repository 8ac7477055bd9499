"""A phase's inputs: its own copy of the run's arguments, and in multilap its lap's share of one seeded order."""

from datasets import Dataset

from trgl_hf import TRGLTrainingArguments
from trgl_hf.training.phase_inputs import lap_data, phase_arguments
from trgl_hf.training.phases import Phase, lap_order


def test_phase_arguments_are_a_copy_and_the_runs_are_unchanged(tmp_path):
    args = TRGLTrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, max_steps=-1, use_cpu=True,
                                 report_to="none")  # fmt: skip
    before = dict(vars(args))
    phase = Phase("module-02", (1,), 2.0, 7, (1,), 2)
    phase_args = phase_arguments(args, phase, tmp_path)
    assert (phase_args.output_dir, phase_args.num_train_epochs, phase_args.max_steps) == (
        str(tmp_path / "phases" / "module-02"), 2.0, 7)  # fmt: skip
    phase_args.train_sampling_strategy = "sequential"
    assert vars(args) == before


def test_laps_read_consecutive_parts_of_one_seeded_order(tmp_path):
    args = TRGLTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, seed=3, use_cpu=True,
                                 report_to="none")  # fmt: skip
    data = Dataset.from_dict({"x": list(range(10))})
    taken = []
    for number in (1, 2, 3):
        phase = Phase(f"lap-{number}-module-01", (0,), 1.0, 2, (), 1, lap=number, laps=3)
        phase_args = phase_arguments(args, phase, tmp_path)
        taken += lap_data(data, phase, phase_args)["x"]
        assert phase_args.train_sampling_strategy == "sequential"
    assert taken == [data["x"][i] for i in lap_order(10, 3, 0, 12)]
    assert args.train_sampling_strategy != "sequential"
