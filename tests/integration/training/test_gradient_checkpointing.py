"""Activation (gradient) checkpointing: `gradient_checkpointing=True` checkpoints the blocks of the modules being
trained. Gradients, transport energies and BatchNorm statistics are those of a run without it (dropout on: the
recomputation draws the same masks), the saved activations shrink, and frozen modules are never recomputed."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    ViTConfig,
    ViTForImageClassification,
)

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

from ...conftest import tiny_hf_resnet

SMALL = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)


def build(family: str) -> torch.nn.Module:
    """Tiny models with dropout on (and BatchNorm for the ResNet)."""
    torch.manual_seed(0)
    if family == "bert":
        return BertForSequenceClassification(BertConfig(vocab_size=40, num_labels=3, **SMALL))
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=4, n_head=2, n_positions=64))
    if family == "vit":
        return ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, num_labels=3, hidden_dropout_prob=0.1,
                                                   attention_probs_dropout_prob=0.1, **SMALL))  # fmt: skip
    return tiny_hf_resnet(num_labels=3, depths=(2, 2))


def inputs_for(family: str, length: int = 9) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    if family in ("vit", "resnet"):
        size = 16 if family == "vit" else 32
        return {"pixel_values": torch.randn(4, 3, size, size, generator=generator)}, torch.tensor([0, 2, 1, 0])
    input_ids = torch.randint(3, 40, (4, length), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[1, length - 3 :] = 0  # padded text: the energy on real tokens is recomputed too
    labels = input_ids.masked_fill(mask == 0, -100) if family == "gpt2" else torch.tensor([0, 2, 1, 0])
    return {"input_ids": input_ids, "attention_mask": mask}, labels


def one_step(model: TRGLModel, inputs, labels) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Transport energies, gradients of the summed TRGL losses, and buffers after one training forward/backward."""
    torch.manual_seed(5)  # the same dropout masks
    steps = list(model.iter_modules(labels=labels, **inputs))
    loss = torch.stack([step.loss for step in steps]).sum()
    parameters = [p for p in model.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)  # (the backbone's unused pooler)
    gradients = [torch.zeros(()) if gradient is None else gradient for gradient in gradients]
    return [step.transport.detach() for step in steps], gradients, [b.clone() for b in model.buffers()]


def count_block_runs(model: TRGLModel, monkeypatch) -> list[int]:
    runs = [0] * len(model.adapter.blocks)
    original = model.adapter.run_block

    def counting(index, state, energy=False):
        runs[index] += 1
        return original(index, state, energy)

    monkeypatch.setattr(model.adapter, "run_block", counting)
    return runs


@pytest.mark.parametrize("family", ["bert", "gpt2", "vit", "resnet"])
def test_checkpointed_blocks_give_the_same_gradients_energies_and_statistics(family, monkeypatch):
    size = 16 if family == "vit" else 32
    model = TRGLModel.from_base(build(family), TRGLConfig(num_modules=2, tau=0.5, image_size=size)).train()
    inputs, labels = inputs_for(family)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    plain = one_step(model, inputs, labels)
    model.load_state_dict(state)  # BatchNorm statistics back to where they were
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and model.is_activation_checkpointing
    runs = count_block_runs(model, monkeypatch)
    checkpointed = one_step(model, inputs, labels)
    assert runs == [2] * len(runs)  # every block ran again in backward
    for before, after in zip(plain[0] + plain[1] + plain[2], checkpointed[0] + checkpointed[1] + checkpointed[2]):
        torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    one_step(model, inputs, labels)
    assert runs == [3] * len(runs)


def test_frozen_modules_are_not_checkpointed_and_every_n_layers_is_honoured(monkeypatch):
    model = TRGLModel.from_base(build("bert"), TRGLConfig(num_modules=2)).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"preserve_rng_state": True})
    runs = count_block_runs(model, monkeypatch)
    inputs, labels = inputs_for("bert")
    with model.phase([1]):  # module 2 trains, module 1 is frozen (no gradients: nothing to recompute)
        one_step(model, inputs, labels)
    assert runs == [1, 1, 2, 2]
    model.activation_checkpointing_enable(every_n_layers=2)
    with model.phase([0, 1]):
        one_step(model, inputs, labels)
    assert runs == [3, 2, 4, 3]


def test_unusable_options_are_refused():
    model = TRGLModel.from_base(build("bert"), TRGLConfig(num_modules=2))
    with pytest.raises(ValueError, match="use_reentrant=False"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="Unknown activation checkpointing option"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"reentrant": False})
    with pytest.raises(ValueError, match="every_n_layers"):
        model.activation_checkpointing_enable(every_n_layers=0)
    assert not model.is_gradient_checkpointing


def test_saved_activations_shrink():
    """Bytes autograd keeps for backward after the forward of a trained module (saved-tensor accounting)."""

    def saved_bytes(model: TRGLModel) -> int:
        total = [0]

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            total[0] += tensor.numel() * tensor.element_size()
            return tensor

        inputs, labels = inputs_for("gpt2", length=48)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            steps = list(model.iter_modules(labels=labels, **inputs))
        del steps
        return total[0]

    model = TRGLModel.from_base(build("gpt2"), TRGLConfig(num_modules=1, tau=1.0)).train()
    plain = saved_bytes(model)
    model.gradient_checkpointing_enable()
    checkpointed = saved_bytes(model)
    assert checkpointed < 0.5 * plain, (checkpointed, plain)


def _train(mode: str, checkpointing: bool, tmp_path) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 40, (24, 10), generator=generator)
    mask = torch.ones_like(ids)
    mask[::3, 7:] = 0
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(),
                              "label": torch.randint(0, 3, (24,), generator=generator).tolist()})  # fmt: skip
    model = TRGLModel.from_base(build("bert"), TRGLConfig(num_modules=2, tau=0.5))
    args = TRGLTrainingArguments(output_dir=str(tmp_path / f"{mode}-{checkpointing}"), trgl_mode=mode,
                                 num_train_epochs=1, per_device_train_batch_size=8, learning_rate=0.1, optim="sgd",
                                 use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True,
                                 trgl_save_stages=False, gradient_checkpointing=checkpointing)  # fmt: skip
    TRGLTrainer(model=model, args=args, train_dataset=data).train()
    assert model.is_gradient_checkpointing == checkpointing
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_the_trainer_flag_trains_the_same_weights(mode, tmp_path):
    plain, checkpointed = _train(mode, False, tmp_path), _train(mode, True, tmp_path)
    initial = TRGLModel.from_base(build("bert"), TRGLConfig(num_modules=2)).state_dict()
    assert not torch.equal(plain["backbone.encoder.layer.3.output.dense.weight"],
                           initial["backbone.encoder.layer.3.output.dense.weight"])  # fmt: skip
    for name, tensor in plain.items():
        torch.testing.assert_close(checkpointed[name], tensor, rtol=0, atol=1e-6, msg=name)
