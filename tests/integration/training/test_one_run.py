"""One run, not K runs: a monotone global step across phases for loggers and the history, the run's state and results
files, TensorBoard event files that survive the phases, the best module by `metric_for_best_model`, `predict` shaped
as `Trainer`'s, and settings that would silently do something else refused."""

import json

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

from ...conftest import tiny_cifar_resnet


class Steps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "loss" in logs:
            self.steps.append(state.global_step)


def trainer_for(tmp_path, digits, callbacks=(), **overrides):
    model = TRGLModel.from_base(tiny_cifar_resnet(num_labels=10, num_channels=1), TRGLConfig(num_modules=3))
    settings = dict(output_dir=str(tmp_path / "out"), trgl_mode="sequential", max_steps=4, logging_steps=2,
                    per_device_train_batch_size=16, learning_rate=0.05, optim="sgd", report_to="none",
                    save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0)  # fmt: skip
    settings.update(overrides)
    return TRGLTrainer(model=model, args=TRGLTrainingArguments(**settings), train_dataset=digits["train"].select(
        range(128)), eval_dataset=digits["validation"].select(range(64)), callbacks=list(callbacks))  # fmt: skip


def test_the_global_step_is_one_monotone_count_across_phases(tmp_path, digits):
    steps = Steps()
    trainer = trainer_for(tmp_path, digits, callbacks=[steps])
    output = trainer.train()
    assert steps.steps == [2, 4, 6, 8, 10, 12]
    assert output.global_step == trainer.state.global_step == 12
    history_steps = [entry["step"] for entry in trainer.state.log_history]
    assert history_steps == sorted(history_steps) and history_steps[-1] == 12
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 12 and {e.get("trgl_phase") for e in state["log_history"]} >= {
        "module-01", "module-02", "module-03"}  # fmt: skip
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert results["train_runtime"] > 0 and "eval_best_module" in results
    assert (tmp_path / "out" / "train_results.json").exists() and (tmp_path / "out" / "eval_results.json").exists()


def test_tensorboard_sees_one_run_whose_event_files_survive_the_phases(tmp_path, digits):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer_for(tmp_path, digits, report_to=["tensorboard"]).train()
    runs = list((tmp_path / "out" / "runs").glob("*"))
    assert len(runs) == 1 and not (tmp_path / "out" / "phases").exists()
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    for k in (1, 2, 3):
        scalars = events.Scalars(f"train/module_{k}_task_loss")
        assert [s.step for s in scalars] == [4 * (k - 1) + 2, 4 * k]
    losses = events.Scalars("train/loss")
    assert [s.step for s in losses] == [2, 4, 6, 8, 10, 12]


def test_the_best_module_follows_metric_for_best_model_and_predict_returns_it(tmp_path, digits):
    trainer = trainer_for(tmp_path, digits, metric_for_best_model="eval_loss", greater_is_better=False)
    trainer.train()
    metrics = trainer.evaluate()
    losses = [metrics[f"eval_module_{k}_loss"] for k in (1, 2, 3)]
    assert metrics["eval_best_module"] == int(np.argmin(losses)) + 1 and "eval_best_module_loss" in metrics
    output = trainer.predict(digits["test"].select(range(32)))
    assert output.predictions.shape == (32, 10) and output.module_predictions.shape == (32, 3, 10)
    np.testing.assert_array_equal(output.predictions, output.module_predictions[:, metrics["eval_best_module"] - 1])
    predictions, labels, _ = output  # unpacks like Trainer's
    assert labels.shape == (32,)


def test_a_custom_metric_without_accuracy_selects_by_loss_under_its_own_name(tmp_path, digits):
    def error_rate(prediction):
        return {"error": float((prediction.predictions.argmax(-1) != prediction.label_ids).mean())}

    trainer = trainer_for(tmp_path, digits)
    trainer.compute_metrics.compute_metrics = error_rate
    metrics = trainer.evaluate()
    assert "eval_best_module_loss" in metrics and "eval_best_module_accuracy" not in metrics
    trainer = trainer_for(tmp_path / "b", digits, metric_for_best_model="accuracy")
    trainer.compute_metrics.compute_metrics = error_rate
    with pytest.raises(ValueError, match="metric_for_best_model"):
        trainer.evaluate()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(max_steps=0), "max_steps"),
        (dict(num_train_epochs=0, max_steps=-1), "num_train_epochs"),
        (dict(trgl_mode="multilap", trgl_laps=3, max_steps=2), "trgl_laps"),
        (dict(torch_compile=True), "torch_compile"),
        (dict(fp16=True), "bf16"),
    ],
)
def test_settings_that_would_silently_differ_are_refused(overrides, field, tmp_path):
    settings = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match=field):
        TRGLTrainingArguments(**{**settings, **overrides})


def test_resumed_runs_continue_the_global_step(tmp_path, digits):
    class StopAfterModule2(TrainerCallback):
        def on_phase_end(self, args, state, control, phase=None, **kwargs):
            if phase.name == "module-02":
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer_for(tmp_path, digits, callbacks=[StopAfterModule2()]).train()
    steps = Steps()
    trainer = trainer_for(tmp_path, digits, callbacks=[steps])
    output = trainer.train(resume_from_checkpoint=True)
    assert output.global_step == 12 and steps.steps[-1] == 12
    assert torch.is_tensor(trainer.model.multipliers)


def test_gradient_accumulation_equals_one_larger_batch_per_module(tmp_path):
    from datasets import Dataset
    from transformers import ViTConfig, ViTForImageClassification

    rng = np.random.default_rng(0)
    data = Dataset.from_dict({"pixel_values": rng.normal(size=(32, 3, 8, 8)).astype(np.float32),
                              "labels": rng.integers(0, 3, 32)}).with_format("torch")  # fmt: skip
    finals = []
    for batch, accumulation in ((16, 1), (8, 2), (4, 4)):
        torch.manual_seed(0)
        config = ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                           image_size=8, patch_size=4, num_labels=3)  # fmt: skip
        base = ViTForImageClassification(config)
        model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, tau=1.0))
        initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        args = TRGLTrainingArguments(output_dir=str(tmp_path / str(batch)), trgl_mode="parallel", max_steps=2,
                                     per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                                     learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", max_grad_norm=1.0,
                                     report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0,
                                     trgl_save_stages=False)  # fmt: skip
        TRGLTrainer(model=model, args=args, train_dataset=data).train()
        finals.append(model.state_dict())
    moved = {name.split(".")[0] for name in initial if not torch.equal(finals[-1][name], initial[name])}
    assert moved == {"backbone", "heads"}  # every part trained
    for other in finals[1:]:
        for name, tensor in finals[0].items():
            torch.testing.assert_close(other[name], tensor, rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("budget", [dict(max_steps=6), dict(num_train_epochs=1.5)])
def test_multilap_laps_continue_one_data_order_and_see_every_example(budget, tmp_path):
    from datasets import Dataset
    from transformers import default_data_collator

    from trgl_hf.training.phases import lap_order

    size, batch = 40, 4
    pixels = np.zeros((size, 1, 8, 8), dtype=np.float32) + np.arange(size, dtype=np.float32)[:, None, None, None]
    data = Dataset.from_dict({"pixel_values": pixels, "labels": np.arange(size) % 10}).with_format("torch")
    seen: list[list[int]] = []

    def recording_collator(rows):
        collated = default_data_collator(rows)
        seen[-1].extend(collated["pixel_values"][:, 0, 0, 0].round().long().tolist())
        return collated

    class NewPhase(TrainerCallback):
        def on_phase_begin(self, args, state, control, **kwargs):
            seen.append([])

    model = TRGLModel.from_base(tiny_cifar_resnet(num_labels=10, num_channels=1), TRGLConfig(num_modules=2))
    args = TRGLTrainingArguments(
        output_dir=str(tmp_path), trgl_mode="multilap", trgl_laps=3, trgl_prefix_cache="never",
        per_device_train_batch_size=batch, learning_rate=0.01, optim="sgd", report_to="none", save_strategy="no",
        disable_tqdm=True, use_cpu=True, seed=7, trgl_save_stages=False, dataloader_num_workers=0, **budget,
    )  # fmt: skip
    TRGLTrainer(model=model, args=args, train_dataset=data, data_collator=recording_collator,
                callbacks=[NewPhase()]).train()  # fmt: skip
    per_lap = 6 // 3 * batch if "max_steps" in budget else round(1.5 / 3 * size)  # the budget is per module
    assert len(seen) == 6  # 3 laps x 2 modules
    for module in (0, 1):
        laps = [seen[lap * 2 + module] for lap in range(3)]
        assert sum(laps, []) == lap_order(size, 7, 0, 3 * per_lap)  # one uninterrupted order, lap after lap
    if "num_train_epochs" in budget:
        assert set(sum(seen[0::2], [])) == set(range(size))  # 1.5 epochs: every example seen


class LearningRates(TrainerCallback):
    def __init__(self):
        self.rates = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "learning_rate" in logs:
            self.rates.append(round(logs["learning_rate"], 6))


@pytest.mark.parametrize("choice", ["persist", "fresh"])
def test_multilap_keeps_one_optimizer_and_schedule_per_module_across_laps(choice, tmp_path, digits):
    rates = LearningRates()
    trainer = trainer_for(tmp_path, digits, callbacks=[rates], trgl_mode="multilap", trgl_laps=2, max_steps=4,
                          logging_steps=1, optim="adamw_torch", learning_rate=0.004, lr_scheduler_type="linear",
                          trgl_lap_optimizer=choice)  # fmt: skip
    trainer.train()
    one_schedule = [0.004, 0.003, 0.002, 0.001]  # the rate each of the module's 4 steps used: one linear decay
    per_module = [
        rates.rates[lap * 6 + module * 2 : lap * 6 + module * 2 + 2] for module in range(3) for lap in (0, 1)
    ]
    for module in range(3):
        lap1, lap2 = per_module[2 * module], per_module[2 * module + 1]
        if choice == "persist":
            assert lap1 + lap2 == one_schedule
        else:
            assert lap1 == lap2 == [0.004, 0.002]


def test_persistent_lap_optimizers_survive_a_resume_between_laps(tmp_path, digits):
    settings = dict(trgl_mode="multilap", trgl_laps=2, max_steps=4, optim="adamw_torch", learning_rate=0.004,
                    lr_scheduler_type="linear", save_strategy="no")  # fmt: skip
    reference = trainer_for(tmp_path / "reference", digits, **settings)
    reference.train()

    class StopAfterLap1(TrainerCallback):
        def on_phase_end(self, args, state, control, phase=None, **kwargs):
            if phase.name == "lap-1-module-03":
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer_for(tmp_path / "run", digits, callbacks=[StopAfterLap1()], **settings).train()
    resumed = trainer_for(tmp_path / "run", digits, **settings)
    resumed.train(resume_from_checkpoint=True)
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)


class StopInPhaseTwo(TrainerCallback):
    """Records, at each step, the arguments the phase's loop runs with and those the callback is given; fails at the
    second phase's first step."""

    def __init__(self):
        self.trainer, self.seen = None, []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append((self.trainer.args.output_dir, self.trainer.args.max_steps, args))
        if len(self.seen) == 5:
            raise RuntimeError("stopped in phase 2")


def test_phases_run_with_their_own_arguments_and_the_users_are_never_changed(tmp_path, digits):
    stopper = StopInPhaseTwo()
    trainer = stopper.trainer = trainer_for(tmp_path, digits, callbacks=[stopper], max_steps=4)
    args, before = trainer.args, dict(vars(trainer.args))
    with pytest.raises(RuntimeError, match="stopped in phase 2"):
        trainer.train()
    assert stopper.seen[0][:2] == (str(tmp_path / "out" / "phases" / "module-01"), 4)
    assert stopper.seen[-1][0] == str(tmp_path / "out" / "phases" / "module-02")
    assert all(seen[2] is args for seen in stopper.seen)  # callbacks that see the run get the user's arguments
    assert trainer.args is args and vars(args) == before
