"""This library's extensions for pretrained bases: tau relative to each module's initial branch energy, a separate
learning rate for the auxiliary heads, and a head warm-up."""

from __future__ import annotations

import pytest
import torch

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments
from trgl_hf.transport import TransportSchedule


def _args(out, **overrides):
    settings = dict(output_dir=str(out), trgl_mode="sequential", max_steps=3, per_device_train_batch_size=16,
                    learning_rate=0.05, optim="sgd", report_to="none", save_strategy="no", disable_tqdm=True,
                    use_cpu=True, seed=0, trgl_save_stages=False)  # fmt: skip
    settings.update(overrides)
    return TRGLTrainingArguments(**settings)


def _model(make_cifar_resnet, **config):
    torch.manual_seed(0)
    base = make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1))
    return TRGLModel.from_base(base, TRGLConfig(num_modules=3, **config))


def test_relative_tau_scales_each_module_by_its_first_batch_energy(tmp_path, digits, make_cifar_resnet):
    model = _model(make_cifar_resnet, tau=10.0, tau_scale="relative", tau_schedule="constant")
    train = digits["train"].select(range(64))
    first = train.with_format("torch")[:16]
    model.train()
    with model.phase([0]):
        step = next(model.iter_modules(pixel_values=first["pixel_values"], labels=first["labels"]))
    energy = float(model.energy_scale[0])
    assert energy > 0 and energy == pytest.approx(float(step.transport.detach()), rel=1e-6)
    # The first batch's penalty is exactly 1 / (2 tau) of... the energy divided by itself.
    assert float(step.loss - step.task_loss) == pytest.approx(1.0 / (2 * 10.0), rel=1e-5)
    assert float(model.transport_schedule.weight(0)) == pytest.approx(1.0 / (2 * 10.0 * energy))
    model = _model(make_cifar_resnet, tau=10.0, tau_scale="relative", tau_schedule="constant")
    TRGLTrainer(model=model, args=_args(tmp_path), train_dataset=train).train()
    assert (model.energy_scale > 0).all()
    saved = tmp_path / "whole"
    model.save_pretrained(saved)
    torch.testing.assert_close(TRGLModel.from_pretrained(saved).energy_scale, model.energy_scale)
    assert TransportSchedule(model.config, None, model.energy_scale).describe()[0] == "10.0 x initial branch energy"


def test_relative_tau_is_refused_with_multipliers():
    with pytest.raises(ValueError, match="tau_scale"):
        TRGLConfig(tau_scale="relative", tau_schedule="multipliers")
    with pytest.raises(ValueError, match="tau_scale"):
        TRGLConfig(tau_scale="percent")


def test_heads_get_their_own_learning_rate(tmp_path, digits, make_cifar_resnet):
    model = _model(make_cifar_resnet)
    trainer = TRGLTrainer(model=model, args=_args(tmp_path, trgl_head_lr_multiplier=10.0),
                          train_dataset=digits["train"].select(range(64)))  # fmt: skip
    with model.phase([1]):
        optimizer = trainer.create_optimizer()
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
    heads = {id(p) for p in model.heads.parameters()}
    rates = {("head" if id(p) in heads else "block", group["lr"]) for group in optimizer.param_groups
             for p in group["params"]}  # fmt: skip
    assert rates == {("block", 0.05), ("head", 0.5)}
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trained == trainable  # nothing lost or added


def test_head_warmup_trains_the_heads_alone_first(tmp_path, digits, make_cifar_resnet):
    model = _model(make_cifar_resnet)
    heads = {name for name, _ in model.named_parameters() if name.startswith("heads.")}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = _args(tmp_path, trgl_mode="parallel", max_steps=2, trgl_head_warmup_steps=2)
    TRGLTrainer(model=model, args=args, train_dataset=digits["train"].select(range(64))).train()
    moved = {name for name, p in model.named_parameters() if not torch.equal(before[name], p)}
    assert moved and moved <= heads  # two warm-up steps: only heads moved
    args = _args(tmp_path / "more", trgl_mode="parallel", max_steps=3, trgl_head_warmup_steps=2)
    TRGLTrainer(model=model, args=args, train_dataset=digits["train"].select(range(64))).train()
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters() if name not in heads)
