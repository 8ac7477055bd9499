"""No host synchronisation inside a training step except at logging steps: finiteness and multiplier weights stay
on the device, the fused energy's backward never asks the host. Counted by patching the tensor methods that make
the host wait for the device (`item`, `__bool__`, `__float__`, `__int__`, `tolist`, `cpu`) when trgl_hf calls them
(the base model's own forward may sync, e.g. GPT-2's mask creation, as it does in end-to-end training)."""

from __future__ import annotations

import contextlib
import os
import sys

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

SYNCING = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu")


class CountingTrainer(TRGLTrainer):
    """Counts syncing calls made during each `training_step` (inside the library's code and the backward)."""

    counts: list[tuple[int, int]] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        calls = 0
        originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

        def counting(name):
            def call(tensor, *args, **kwargs):
                nonlocal calls
                caller = sys._getframe(1).f_code.co_filename
                if f"{os.sep}trgl_hf{os.sep}" in caller and f"{os.sep}tests{os.sep}" not in caller:
                    calls += 1
                return originals[name](tensor, *args, **kwargs)

            return call

        with contextlib.ExitStack() as stack:
            for name in SYNCING:
                setattr(torch.Tensor, name, counting(name))
                stack.callback(setattr, torch.Tensor, name, originals[name])
            loss = super().training_step(model, inputs, num_items_in_batch)
        self.counts.append((self.state.global_step + 1, calls))
        return loss


def _args(out, mode, **overrides):
    settings = dict(output_dir=str(out), trgl_mode=mode, max_steps=4, per_device_train_batch_size=16, use_cpu=True,
                    report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=100, learning_rate=0.01,
                    trgl_save_stages=False)  # fmt: skip
    settings.update(overrides)
    return TRGLTrainingArguments(**settings)


@pytest.mark.parametrize("schedule", ["halves", "multipliers"])
def test_a_resnet_step_never_waits_for_the_host(tmp_path, digits, make_cifar_resnet, schedule):
    model = TRGLModel.from_base(make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1)),
                                TRGLConfig(num_modules=3, tau_schedule=schedule, multiplier_period=1))  # fmt: skip
    CountingTrainer.counts = []
    trainer = CountingTrainer(model=model, args=_args(tmp_path, "parallel"), train_dataset=digits["train"])
    trainer.train()
    assert len(CountingTrainer.counts) == 4
    assert all(calls == 0 for _, calls in CountingTrainer.counts), CountingTrainer.counts


def test_a_transformer_step_never_waits_for_the_host_after_measuring_its_scale(tmp_path):
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=2, n_positions=32))
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2, tau_scale="relative"))
    ids = torch.randint(0, 40, (64, 16)).tolist()
    train = Dataset.from_dict({"input_ids": ids, "labels": ids}).with_format("torch")
    CountingTrainer.counts = []
    CountingTrainer(model=model, args=_args(tmp_path, "sequential", trgl_prefix_cache="never"),
                    train_dataset=train).train()  # fmt: skip
    counts = CountingTrainer.counts
    assert len(counts) == 8
    # The relative scale is read once per module, on its first step (this library's extension); then nothing.
    assert [calls for step, calls in counts if step > 1] == [0] * 6, counts


def test_a_non_finite_loss_is_still_caught_at_the_next_log(tmp_path, digits, make_cifar_resnet):
    from trgl_hf import NonFiniteLossError

    model = TRGLModel.from_base(make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1)),
                                TRGLConfig(num_modules=3))  # fmt: skip
    original = model.heads[0].forward
    calls = []

    def late_nan(hidden):  # finite at first, NaN from the third step on
        calls.append(1)
        return original(hidden) * (float("nan") if len(calls) >= 3 else 1.0)

    model.heads[0].forward = late_nan
    trainer = TRGLTrainer(model=model, args=_args(tmp_path, "parallel", max_steps=8, logging_steps=5),
                          train_dataset=digits["train"])  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="module 1 became nan at step 3 of phase parallel"):
        trainer.train()
    assert trainer.state.global_step == 5  # stopped at the first log after it
