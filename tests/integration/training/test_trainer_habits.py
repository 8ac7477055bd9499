"""Trainer habits at K >= 2 whose numbers must describe the weights that were kept: the best checkpoint of a phase,
every row of an evaluation, the set a dict of evaluation sets names, a run resumed at a phase's last checkpoint."""

import math
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

from ...conftest import tiny_cifar_resnet


def trainer_for(out, digits, callbacks=(), eval_dataset=None, compute_metrics=None, **overrides):
    model = TRGLModel.from_base(tiny_cifar_resnet(num_labels=10, num_channels=1), TRGLConfig(num_modules=2))
    settings = dict(output_dir=str(out), trgl_mode="sequential", max_steps=6, logging_steps=1,
                    per_device_train_batch_size=16, learning_rate=0.5, optim="sgd", report_to="none",
                    save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0)  # fmt: skip
    settings.update(overrides)
    validation = digits["validation"].select(range(40)) if eval_dataset is None else eval_dataset
    return TRGLTrainer(model=model, args=TRGLTrainingArguments(**settings), train_dataset=digits["train"].select(
        range(96)), eval_dataset=validation, callbacks=list(callbacks), compute_metrics=compute_metrics)  # fmt: skip


def test_with_load_best_model_at_end_the_stage_metrics_are_the_best_checkpoints(tmp_path, digits):
    trainer = trainer_for(tmp_path / "out", digits, eval_strategy="steps", eval_steps=1, save_strategy="steps",
                          save_steps=1, load_best_model_at_end=True, metric_for_best_model="loss",
                          learning_rate=4.0)  # fmt: skip
    trainer.train()
    phase_losses = [e["eval_module_1_loss"] for e in trainer.state.log_history
                    if e.get("trgl_phase") == "module-01" and "eval_module_1_loss" in e]  # fmt: skip
    at_steps, at_end = phase_losses[:6], phase_losses[6:]  # an evaluation per step, then the phase's own
    assert min(at_steps) < at_steps[-1]  # the last step is not the best
    assert trainer.stage_metrics[1]["loss"] == pytest.approx(min(at_steps), rel=1e-6) == at_end[-1]


def test_the_metric_check_before_training_leaves_evaluations_whole(tmp_path, digits):
    steps = []

    class CountBatches(TrainerCallback):
        def on_prediction_step(self, args, state, control, **kwargs):
            steps.append(1)

    trainer = trainer_for(tmp_path / "out", digits, [CountBatches()], metric_for_best_model="accuracy",
                          dataloader_num_workers=1, dataloader_persistent_workers=True,
                          per_device_eval_batch_size=8)  # fmt: skip
    trainer.train()
    steps.clear()
    trainer.evaluate()
    assert len(steps) == math.ceil(40 / 8)


def test_the_checkpoint_get_last_checkpoint_finds_holds_the_run_weights(tmp_path, digits):
    trainer = trainer_for(tmp_path / "out", digits)
    trainer.train()
    marker = get_last_checkpoint(str(tmp_path / "out"))
    loaded = TRGLModel.from_pretrained(marker)
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_a_run_resumed_at_a_phases_last_checkpoint_keeps_one_run(tmp_path, digits):
    class StopAfterModule1sLastSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 6:
                raise KeyboardInterrupt

    class Steps(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.steps.append(state.global_step)

    settings = dict(save_strategy="steps", save_steps=3)
    reference = trainer_for(tmp_path / "reference", digits, **settings)
    reference.train()
    with pytest.raises(KeyboardInterrupt):
        trainer_for(tmp_path / "run", digits, [StopAfterModule1sLastSave()], **settings).train()
    steps = Steps()
    resumed = trainer_for(tmp_path / "run", digits, [steps], **settings)
    resumed.train(resume_from_checkpoint=get_last_checkpoint(str(tmp_path / "run")))
    assert steps.steps == sorted(steps.steps) and steps.steps[0] >= 6 and steps.steps[-1] == 12
    history = [(e["step"], e.get("epoch")) for e in resumed.state.log_history]
    assert [s for s, _ in history] == sorted(s for s, _ in history)
    assert resumed.state.epoch == pytest.approx(reference.state.epoch)
    for name, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, msg=name)


def test_a_dict_of_evaluation_sets_chooses_by_the_set_it_names(tmp_path, digits):
    sets = {"a": digits["validation"].select(range(20)), "b": digits["test"].select(range(20))}
    trainer = trainer_for(tmp_path / "out", digits, eval_dataset=sets, metric_for_best_model="eval_b_loss",
                          greater_is_better=False)  # fmt: skip
    trainer.train()
    assert set(trainer.stage_metrics[1]) >= {"accuracy", "loss"}
    evaluation = trainer.evaluate()
    losses = [evaluation[f"eval_b_module_{k}_loss"] for k in (1, 2)]
    assert trainer.best_module == losses.index(min(losses)) + 1 == evaluation["eval_b_best_module"]
    assert trainer.stage_metrics[2]["loss"] == pytest.approx(losses[1], rel=1e-6)


def test_a_dict_of_evaluation_sets_with_a_plain_metric_name_is_refused_before_training(tmp_path, digits):
    sets = {"a": digits["validation"].select(range(20)), "b": digits["test"].select(range(20))}
    trainer = trainer_for(tmp_path / "out", digits, eval_dataset=sets, metric_for_best_model="accuracy")
    with pytest.raises(ValueError, match="eval_a_accuracy"):
        trainer.train()
    assert not (tmp_path / "out" / "stage-01").exists()


def test_optimizers_with_fsdp_are_refused(tmp_path, digits):
    model = TRGLModel.from_base(tiny_cifar_resnet(num_labels=10, num_channels=1), TRGLConfig(num_modules=2))
    args = TRGLTrainingArguments(output_dir=str(tmp_path), trgl_mode="parallel", use_cpu=True, report_to="none",
                                 fsdp=True, fsdp_config={"fsdp_version": 2}, save_strategy="no")  # fmt: skip
    with pytest.raises(ValueError, match="optimizer_cls_and_kwargs"):
        TRGLTrainer(model=model, args=args, optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))


def test_the_tutorials_evaluate_metric_scores_every_module(tmp_path, digits):
    """The tutorials' `metric = evaluate.load("accuracy")` in `compute_metrics` (a local copy: no network)
    gives every module's accuracy, equal to the built-in one."""
    import evaluate
    import numpy as np

    metric = evaluate.load(str(Path(__file__).resolve().parents[2] / "data" / "evaluate_accuracy.py"))

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        return metric.compute(predictions=np.argmax(logits, axis=-1), references=labels)

    trainer = trainer_for(tmp_path / "out", digits, compute_metrics=compute_metrics)
    trainer.train()
    with_evaluate = trainer.evaluate()
    trainer.compute_metrics = None
    builtin = trainer_for(tmp_path / "builtin", digits)
    builtin.model.load_state_dict(trainer.model.state_dict())
    expected = builtin.evaluate()
    for module in (1, 2):
        assert with_evaluate[f"eval_module_{module}_accuracy"] == pytest.approx(
            expected[f"eval_module_{module}_accuracy"]
        )
    assert 0 < with_evaluate["eval_module_2_accuracy"] <= 1
