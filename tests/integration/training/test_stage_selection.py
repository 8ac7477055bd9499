"""`trgl_save_stages` in real runs: only the selected stage folders are written and recorded, and stage numbers the
model does not have are refused before training."""

import json

import pytest

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

from ...conftest import tiny_cifar_resnet


def run(tmp_path, digits, selection):
    model = TRGLModel.from_base(tiny_cifar_resnet(num_labels=10, num_channels=1), TRGLConfig(num_modules=3))
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "out"), trgl_mode="sequential", max_steps=1,
                                 per_device_train_batch_size=16, report_to="none", save_strategy="no",
                                 disable_tqdm=True, use_cpu=True, trgl_save_stages=selection)  # fmt: skip
    TRGLTrainer(model=model, args=args, train_dataset=digits["train"].select(range(32))).train()
    written = sorted(path.name for path in (tmp_path / "out").glob("stage-*"))
    recorded = sorted(json.loads((tmp_path / "out" / "trgl_state.json").read_text())["stages"])
    return written, recorded


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ("last", ["stage-03"]),
        ([3, 1], ["stage-01", "stage-03"]),
        (False, []),
        (True, ["stage-01", "stage-02", "stage-03"]),
    ],
)
def test_only_the_selected_stages_are_written_and_recorded(selection, expected, tmp_path, digits):
    written, recorded = run(tmp_path, digits, selection)
    assert written == expected
    assert recorded == [name.split("-")[1].lstrip("0") for name in expected]


def test_stage_numbers_the_model_does_not_have_are_refused_before_training(tmp_path, digits):
    with pytest.raises(ValueError, match="trgl_save_stages"):
        run(tmp_path, digits, "2,4")
    assert not (tmp_path / "out" / "stage-02").exists()
