"""This library's extensions for pretrained bases: tau relative to each module's initial branch energy, a separate
learning rate for the auxiliary heads, and a head warm-up."""

from __future__ import annotations

import pytest
import torch

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments
from trgl_hf.modeling.transport import TransportSchedule


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


def _tiny_bert(num_labels=2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=num_labels)  # fmt: skip
    return BertForSequenceClassification(config)


def test_a_pretrained_base_gets_the_pretrained_defaults_and_a_random_one_the_papers(tmp_path):
    from transformers import BertForSequenceClassification

    from trgl_hf.modeling.configuration_trgl import DEFAULT_TAU
    from trgl_hf.modeling.pretrained_defaults import PRETRAINED_HEAD_WARMUP_STEPS, PRETRAINED_TAU

    _tiny_bert().save_pretrained(tmp_path / "base")
    pretrained = TRGLModel.from_base(BertForSequenceClassification.from_pretrained(tmp_path / "base"),
                                     TRGLConfig(num_modules=2))  # fmt: skip
    by_path = TRGLModel.from_base(str(tmp_path / "base"), num_modules=2)
    scratch = TRGLModel.from_base(_tiny_bert(), TRGLConfig(num_modules=2))
    assert pretrained.config.tau_scale == by_path.config.tau_scale == "relative"
    assert pretrained.config.tau == by_path.config.tau == PRETRAINED_TAU
    assert scratch.config.tau_scale == "absolute" and scratch.config.tau == DEFAULT_TAU
    assert pretrained.config.aux_head == by_path.config.aux_head == "mean" and scratch.config.aux_head == "native"
    given = TRGLModel.from_base(str(tmp_path / "base"), num_modules=2, tau=3.0)
    assert (given.config.tau, given.config.tau_scale) == (3.0, "absolute")  # an explicit tau keeps its meaning
    assert TRGLModel.from_base(str(tmp_path / "base"), num_modules=2, tau_scale="absolute").config.tau_scale == (
        "absolute"
    )
    assert TRGLModel.from_base(str(tmp_path / "base"), num_modules=2, use_transport=False).config.tau_scale == (
        "absolute"
    )
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none")
    settings = TRGLTrainer(model=pretrained, args=args).head_settings
    assert (settings.lr_multiplier, settings.warmup_steps) == (20.0, PRETRAINED_HEAD_WARMUP_STEPS)  # 1e-3 / 5e-5
    fast = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none", learning_rate=0.01)
    assert TRGLTrainer(model=pretrained, args=fast).head_settings.lr_multiplier == 1.0  # never below learning_rate
    assert "pretrained base" in settings.source
    settings = TRGLTrainer(model=scratch, args=args).head_settings
    assert (settings.lr_multiplier, settings.warmup_steps) == (1.0, 0)
    given = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none",
                                  trgl_head_lr_multiplier=3.0, trgl_head_warmup_steps=7)  # fmt: skip
    settings = TRGLTrainer(model=pretrained, args=given).head_settings
    assert (settings.lr_multiplier, settings.warmup_steps, settings.source) == (3.0, 7, "as given")


def test_a_pretrained_base_trains_with_the_pretrained_defaults(tmp_path):
    from datasets import Dataset
    from transformers import BertForSequenceClassification

    from trgl_hf.modeling.pretrained_defaults import PRETRAINED_HEAD_LEARNING_RATE

    _tiny_bert().save_pretrained(tmp_path / "base")
    model = TRGLModel.from_base(BertForSequenceClassification.from_pretrained(tmp_path / "base"),
                                TRGLConfig(num_modules=2))  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_ids": torch.randint(5, 60, (64, 10), generator=generator).tolist(),
                              "labels": torch.randint(0, 2, (64,), generator=generator).tolist()})  # fmt: skip
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = _args(tmp_path / "run", trgl_mode="parallel", max_steps=4, learning_rate=1e-4, optim="adamw_torch")
    trainer = TRGLTrainer(model=model, args=args, train_dataset=data)
    optimizer = trainer.create_optimizer()
    heads = {id(p) for p in model.heads.parameters()}
    assert {(id(p) in heads, group["lr"]) for group in optimizer.param_groups for p in group["params"]} == {
        (False, 1e-4), (True, PRETRAINED_HEAD_LEARNING_RATE)}  # fmt: skip
    trainer.optimizer = None
    trainer.train()
    moved = {name for name, p in model.named_parameters() if not torch.equal(initial[name], p)}
    assert any(name.startswith("heads.") for name in moved) and any(not name.startswith("heads.") for name in moved)
    assert model.config.tau_scale == "relative" and (model.energy_scale > 0).all()


def test_the_mean_head_is_the_default_only_where_it_exports_exactly(tmp_path):
    """A pretrained text classifier with a final norm (GPT-2's `ln_f`) or a pretrained image classifier keeps the
    native head; an explicit `aux_head` is kept."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    GPT2ForSequenceClassification(GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, num_labels=2,
                                             pad_token_id=0)).save_pretrained(tmp_path / "gpt2")  # fmt: skip
    ViTForImageClassification(
        ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).save_pretrained(tmp_path / "vit")
    for name in ("gpt2", "vit"):
        assert TRGLModel.from_base(str(tmp_path / name), num_modules=2).config.aux_head == "native"
    _tiny_bert().save_pretrained(tmp_path / "bert")
    assert TRGLModel.from_base(str(tmp_path / "bert"), num_modules=2, aux_head="native").config.aux_head == "native"
