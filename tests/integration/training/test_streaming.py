"""Streaming (`IterableDataset`) training data in every mode: steps counted with `max_steps`, the prefix recomputed
(a lazily mapped random augmentation is never frozen into a cache), an epoch count refused."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import IterableDataset
from transformers import TrainerCallback

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments


def _args(out, mode, **overrides):
    settings = dict(output_dir=str(out), trgl_mode=mode, max_steps=4, per_device_train_batch_size=16, use_cpu=True,
                    report_to="none", save_strategy="no", disable_tqdm=True, trgl_laps=2, learning_rate=0.05,
                    optim="sgd")  # fmt: skip
    settings.update(overrides)
    return TRGLTrainingArguments(**settings)


class CountSteps(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_phase_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.mark.parametrize("mode", ["parallel", "sequential", "multilap"])
def test_a_streaming_dataset_trains_in_every_mode(mode, tmp_path, digits, make_cifar_resnet, caplog):
    stream = digits["train"].to_iterable_dataset(num_shards=4)
    seen = []

    def augment(row):  # lazily applied at every pass: random
        seen.append(1)
        row["pixel_values"] = [[[value + random.gauss(0, 0.01) for value in line] for line in plane]
                               for plane in row["pixel_values"]]  # fmt: skip
        return row

    stream = stream.map(augment)
    model = TRGLModel.from_base(make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1)),
                                TRGLConfig(num_modules=3))  # fmt: skip
    before = {name: value.clone() for name, value in model.state_dict().items()}
    counter = CountSteps()
    trainer = TRGLTrainer(model=model, args=_args(tmp_path, mode), train_dataset=stream, callbacks=[counter],
                          eval_dataset=digits["validation"].select(range(32)))  # fmt: skip
    with caplog.at_level("INFO", logger="trgl_hf"):
        output = trainer.train()
    phases = {"parallel": 1, "sequential": 3, "multilap": 6}[mode]
    assert len(counter.steps) == phases
    assert output.global_step == {"parallel": 4, "sequential": 12, "multilap": 12}[mode]
    if mode != "parallel":
        assert "recomputing the frozen prefix every step" in caplog.text and "iterable" in caplog.text
        assert "caching" not in caplog.text
    assert len(seen) >= output.global_step * 16  # every training row went through the random map, never a cache
    assert any(not torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert (tmp_path / "stage-03" / "model.safetensors").is_file()
    assert set(trainer.evaluate()) >= {"eval_module_1_accuracy", "eval_module_3_accuracy"}


def test_a_torch_iterable_dataset_trains(tmp_path, digits, make_cifar_resnet):
    rows = list(digits["train"].with_format("torch").select(range(96)))

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(rows)

    model = TRGLModel.from_base(make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1)),
                                TRGLConfig(num_modules=3))  # fmt: skip
    output = TRGLTrainer(model=model, args=_args(tmp_path, "multilap", max_steps=2), train_dataset=Stream()).train()
    assert output.global_step == 6


def test_a_stream_is_cached_only_when_asked_and_then_trains_like_the_stored_data(tmp_path, digits, make_cifar_resnet):
    finals = {}
    for name, data in (("stream", digits["train"].to_iterable_dataset()), ("stored", digits["train"])):
        torch.manual_seed(0)
        model = TRGLModel.from_base(make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1)),
                                    TRGLConfig(num_modules=3))  # fmt: skip
        args = _args(tmp_path / name, "sequential", trgl_prefix_cache="always", train_sampling_strategy="sequential",
                     trgl_save_stages=False)  # fmt: skip
        TRGLTrainer(model=model, args=args, train_dataset=data).train()
        finals[name] = model.state_dict()
    for key, value in finals["stored"].items():  # module 1 reads the stream in order; modules 2, 3 read the caches
        torch.testing.assert_close(finals["stream"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_an_epoch_count_of_a_stream_is_refused(tmp_path, digits, make_cifar_resnet):
    model = TRGLModel.from_base(make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1)),
                                TRGLConfig(num_modules=3))  # fmt: skip
    args = _args(tmp_path, "sequential", max_steps=-1, num_train_epochs=2)
    with pytest.raises(ValueError, match=r"give `max_steps` instead \(per module"):
        TRGLTrainer(model=model, args=args, train_dataset=digits["train"].to_iterable_dataset())
    assert not (tmp_path / "stage-01").exists()
