"""TRGLTrainer: the three regimes on real data, stage folders, isolation through the optimizer, bad input, resume."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, TrainerCallback

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments


def make_args(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=3,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=256,
        learning_rate=0.05,
        optim="sgd",
        lr_scheduler_type="constant",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=5,
        seed=0,
        dataloader_num_workers=0,
    )
    settings.update(overrides)
    return TRGLTrainingArguments(**settings)


def digits_model(make_cifar_resnet, **config):
    base = make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1))
    return TRGLModel.from_base(base, TRGLConfig(**{"num_modules": 3, "tau": 10.0, **config}))


@pytest.mark.parametrize("mode", ["parallel", "sequential", "multilap"])
def test_each_mode_learns_digits_and_writes_every_stage(mode, tmp_path, digits, make_cifar_resnet):
    model = digits_model(make_cifar_resnet)
    args = make_args(tmp_path, trgl_mode=mode, num_train_epochs=4)
    trainer = TRGLTrainer(model=model, args=args, train_dataset=digits["train"], eval_dataset=digits["validation"])
    output = trainer.train()
    assert output.global_step > 0
    metrics = trainer.evaluate()
    for stage in (1, 2, 3):
        assert metrics[f"eval_module_{stage}_accuracy"] > 0.5, metrics  # chance is 0.1
        folder = tmp_path / "out" / f"stage-{stage:02d}"
        assert (folder / "README.md").exists() and (folder / "trgl_stage.json").exists()
        stage_model = AutoModelForImageClassification.from_pretrained(folder).eval()
        batch = digits["validation"][:]
        with torch.no_grad():
            predictions = stage_model(pixel_values=batch["pixel_values"]).logits.argmax(-1)
        accuracy = (predictions == batch["labels"]).float().mean().item()
        assert accuracy == pytest.approx(metrics[f"eval_module_{stage}_accuracy"], abs=1e-6)
        card = (folder / "README.md").read_text()
        assert "library_name: transformers" in card and f"Stage {stage} of 3" in card
    assert 1 <= metrics["eval_best_module"] <= 3
    assert not (tmp_path / "out" / "phases").exists()
    assert any("module_1_transport" in entry for entry in trainer.state.log_history)


def test_sequential_freezes_finished_modules(tmp_path, digits, make_cifar_resnet):
    model = digits_model(make_cifar_resnet)
    trainer = TRGLTrainer(
        model=model,
        args=make_args(tmp_path, trgl_mode="sequential", num_train_epochs=1),
        train_dataset=digits["train"],
    )
    trainer.train()
    saved_after_module_1 = load_file(tmp_path / "out" / "stage-01" / "model.safetensors")
    final_prefix = model.export_stage(1).state_dict()
    assert any("running_mean" in name for name in saved_after_module_1)
    for name, tensor in saved_after_module_1.items():
        torch.testing.assert_close(final_prefix[name], tensor, rtol=0, atol=0)


def test_parallel_update_equals_each_module_own_gradient(tmp_path, digits, make_cifar_resnet):
    model = digits_model(make_cifar_resnet)
    reference = digits_model(make_cifar_resnet)
    reference.load_state_dict(model.state_dict())
    lr = 0.1
    args = make_args(
        tmp_path,
        trgl_mode="parallel",
        max_steps=1,
        learning_rate=lr,
        max_grad_norm=0.0,
        per_device_train_batch_size=32,
        trgl_save_stages=False,
    )
    trainer = TRGLTrainer(model=model, args=args, train_dataset=digits["train"])
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.train()
    reference.train()
    params = list(reference.parameters())
    expected = {id(p): torch.zeros_like(p) for p in params}
    for step in reference.iter_modules(**batch):
        grads = torch.autograd.grad(step.loss, reference.module_parameters(step.index))
        for param, grad in zip(reference.module_parameters(step.index), grads):
            expected[id(param)] += grad
    for (name, new), old in zip(model.named_parameters(), params):
        torch.testing.assert_close(new, old - lr * expected[id(old)], rtol=1e-4, atol=1e-6, msg=name)


def test_prefix_cache_gives_the_same_model_as_recomputing(tmp_path, digits, make_cifar_resnet):
    finals = {}
    for cache in ("always", "never"):
        model = digits_model(make_cifar_resnet)
        args = make_args(
            tmp_path / cache,
            trgl_mode="sequential",
            num_train_epochs=1,
            trgl_prefix_cache=cache,
            trgl_save_stages=False,
        )
        TRGLTrainer(model=model, args=args, train_dataset=digits["train"]).train()
        finals[cache] = model.state_dict()
    for name, tensor in finals["always"].items():
        torch.testing.assert_close(finals["never"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_prefix_cache_auto_refuses_random_pipelines(tmp_path, digits, make_cifar_resnet):
    model = digits_model(make_cifar_resnet)
    augmented = digits["train"].with_transform(lambda batch: batch)
    trainer = TRGLTrainer(model=model, args=make_args(tmp_path, trgl_mode="sequential"), train_dataset=augmented)
    assert trainer.prefix_cache_decision()[0] is False
    trainer = TRGLTrainer(model=model, args=make_args(tmp_path, trgl_mode="sequential"), train_dataset=digits["train"])
    assert trainer.prefix_cache_decision()[0] is True


def test_gradient_accumulation_halves_optimizer_steps(tmp_path, digits, make_cifar_resnet):
    model = digits_model(make_cifar_resnet)
    args = make_args(
        tmp_path,
        trgl_mode="parallel",
        num_train_epochs=1,
        per_device_train_batch_size=32,
        gradient_accumulation_steps=2,
        trgl_save_stages=False,
    )
    output = TRGLTrainer(model=model, args=args, train_dataset=digits["train"]).train()
    assert output.global_step == 20  # 40 micro-batches of 32 examples


def test_multipliers_grow_with_the_task_loss(tmp_path, digits, make_cifar_resnet):
    model = digits_model(make_cifar_resnet, tau_schedule="multipliers", multiplier_period=5)
    args = make_args(tmp_path, trgl_mode="parallel", max_steps=10, trgl_save_stages=False)
    TRGLTrainer(model=model, args=args, train_dataset=digits["train"]).train()
    assert (model.multipliers > 1.0).all()
    assert float(model.transport_schedule.weight(0)) == pytest.approx(1.0 / float(model.multipliers[0]))


@pytest.mark.parametrize("problem", ["labels_out_of_range", "no_labels", "empty"])
def test_bad_datasets_are_refused_before_writing(problem, tmp_path, digits, make_cifar_resnet):
    dataset = digits["train"]
    if problem == "labels_out_of_range":
        dataset = dataset.with_format(None).cast_column("labels", __import__("datasets").Value("int64"))
        dataset = dataset.map(lambda row: {"labels": row["labels"] + 5}).with_format("torch")
        message = "num_labels=10"
    elif problem == "no_labels":
        dataset = dataset.remove_columns("labels")
        message = "has no labels"
    else:
        dataset = dataset.select([])
        message = "empty"
    trainer = TRGLTrainer(model=digits_model(make_cifar_resnet), args=make_args(tmp_path), train_dataset=dataset)
    with pytest.raises(ValueError, match=message):
        trainer.train()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bad_trainer_inputs(tmp_path, hf_resnet):
    with pytest.raises(ValueError, match="trgl_mode"):
        TRGLTrainingArguments(output_dir=str(tmp_path), trgl_mode="greedy")
    with pytest.raises(ValueError, match="TRGLModel.from_base"):
        TRGLTrainer(model=hf_resnet, args=make_args(tmp_path))


class InterruptAt(TrainerCallback):
    """Interrupts the run at the first checkpoint of `phase_name` at or after its `step`-th step."""

    def __init__(self, phase_name, step):
        self.phase_name, self.step, self.phase, self.phase_start = phase_name, step, None, 0

    def on_phase_begin(self, args, state, control, phase=None, **kwargs):
        self.phase, self.phase_start = phase.name, state.global_step

    def on_save(self, args, state, control, **kwargs):
        if self.phase == self.phase_name and state.global_step - self.phase_start >= self.step:
            raise KeyboardInterrupt("simulated interruption")


@pytest.mark.parametrize("mode", ["sequential", pytest.param("multilap", marks=pytest.mark.slow)])
def test_interrupted_run_resumes_to_the_same_weights(mode, tmp_path, digits, make_cifar_resnet):
    train = digits["train"].select(range(512))
    phase = "module-02" if mode == "sequential" else "lap-2-module-01"
    common = dict(trgl_mode=mode, num_train_epochs=2, save_strategy="steps", save_steps=4)

    reference = digits_model(make_cifar_resnet)
    TRGLTrainer(model=reference, args=make_args(tmp_path / "reference", **common), train_dataset=train).train()

    interrupted = digits_model(make_cifar_resnet)
    trainer = TRGLTrainer(
        model=interrupted,
        args=make_args(tmp_path / "run", **common),
        train_dataset=train,
        callbacks=[InterruptAt(phase, 4)],
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    state = json.loads((tmp_path / "run" / "out" / "trgl_state.json").read_text())
    assert phase not in state["completed_phases"] and state["completed_phases"]
    assert (tmp_path / "run" / "out" / "phases" / phase / "checkpoint-4").exists()

    resumed = digits_model(make_cifar_resnet, tau=10.0)  # fresh weights: everything must come from disk
    torch.manual_seed(123)
    TRGLTrainer(model=resumed, args=make_args(tmp_path / "run", **common), train_dataset=train).train(
        resume_from_checkpoint=True
    )
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_progress_bar_names_the_phase(tmp_path, digits, make_cifar_resnet):
    from trgl_hf.training.run_callbacks import PhaseProgressCallback

    seen = []

    class Recorder(TrainerCallback):
        def on_phase_begin(self, args, state, control, **kwargs):
            seen.append(trainer.describe_phase())

    model = digits_model(make_cifar_resnet)
    args = make_args(tmp_path, trgl_mode="multilap", max_steps=2, disable_tqdm=False, trgl_save_stages=False)
    trainer = TRGLTrainer(model=model, args=args, train_dataset=digits["train"], callbacks=[Recorder()])
    assert any(isinstance(c, PhaseProgressCallback) for c in trainer.callback_handler.callbacks)
    trainer.train()
    assert seen[0] == "module 1/3 (phase 1/6)" and seen[-1] == "module 3/3 (phase 6/6)"
