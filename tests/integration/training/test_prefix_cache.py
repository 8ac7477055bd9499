"""The prefix cache in real sequential runs: a disk cache trains bit-identically to the memory cache, each cache is
computed from the previous one, and the previous in-memory cache counts against the budget."""

from __future__ import annotations

import torch
from transformers import default_data_collator

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments
from trgl_hf.training import prefix_cache
from trgl_hf.training.prefix_cache import (
    parse_bytes,
)


def _sequential_args(out, **overrides):
    settings = dict(output_dir=str(out), trgl_mode="sequential", num_train_epochs=1, per_device_train_batch_size=32,
                    learning_rate=0.05, optim="sgd", report_to="none", save_strategy="no", disable_tqdm=True,
                    use_cpu=True, seed=0, trgl_save_stages=False, trgl_prefix_cache="always")  # fmt: skip
    settings.update(overrides)
    return TRGLTrainingArguments(**settings)


class CacheSpy:
    """Records each phase's cache as it is built (and the shard files at that moment)."""

    def __init__(self, monkeypatch):
        self.caches, self.sizes = [], []
        original = prefix_cache.build_prefix_cache

        def spy(*args, **kwargs):
            cache = original(*args, **kwargs)
            files = sorted(cache.folder.glob("*.safetensors")) if cache.folder else []
            self.caches.append((cache, (files, len(cache.shards)), cache.gather(range(len(cache)))))
            self.sizes.append(cache.nbytes)
            return cache

        monkeypatch.setattr("trgl_hf.training.phase_cache.build_prefix_cache", spy)


def test_a_disk_cache_trains_bit_identically_to_the_memory_cache(tmp_path, digits, make_cifar_resnet, monkeypatch):
    monkeypatch.setattr(prefix_cache, "SHARD_BYTES", 64 * 1024)
    finals, spies = {}, {}
    for where, budget in (("memory", None), ("disk", "1KB")):
        torch.manual_seed(0)
        model = TRGLModel.from_base(make_cifar_resnet(num_labels=10, num_channels=1), TRGLConfig(num_modules=3))
        spies[where] = CacheSpy(monkeypatch)
        args = _sequential_args(tmp_path / where, trgl_prefix_cache_max_memory=budget)
        TRGLTrainer(model=model, args=args, train_dataset=digits["train"]).train()
        finals[where] = model.state_dict()
        assert not (tmp_path / where / ".trgl-prefix-cache").exists()  # removed when the run ends
    for name, tensor in finals["memory"].items():
        assert torch.equal(finals["disk"][name], tensor), name
    assert [cache.on_disk for cache, _, _ in spies["disk"].caches] == [True, True]
    assert [cache.on_disk for cache, _, _ in spies["memory"].caches] == [False, False]
    for _, (files, shards), _ in spies["disk"].caches:
        assert len(files) == shards > 1  # written in shards as batches were computed
    for (_, _, on_disk), (_, _, in_memory) in zip(spies["disk"].caches, spies["memory"].caches):
        for name in in_memory:
            assert torch.equal(on_disk[name], in_memory[name])


def test_each_cache_is_computed_from_the_previous_one(tmp_path, digits, make_cifar_resnet, monkeypatch):
    spy = CacheSpy(monkeypatch)
    torch.manual_seed(0)
    model = TRGLModel.from_base(make_cifar_resnet(num_labels=10, num_channels=1), TRGLConfig(num_modules=3))
    calls = []
    original = model.adapter.embed
    model.adapter.embed = lambda *a, **k: calls.append(1) or original(*a, **k)
    train = digits["train"].select(range(256))
    TRGLTrainer(model=model, args=_sequential_args(tmp_path), train_dataset=train).train()
    # The raw data went through the stem twice: module 1's 8 training batches and one pass to cache module 1's
    # outputs; modules 2 and 3 train on caches, and module 2's cache came from module 1's (rebuilding it from the raw
    # data would be 8 more).
    assert len(calls) == 2 * 8
    third = spy.caches[1][2]["trgl_hidden_states"]
    loader = torch.utils.data.DataLoader(train.with_format("torch"), batch_size=64, collate_fn=default_data_collator)
    model.eval()
    with torch.no_grad():
        recomputed = torch.cat([step.hidden_state for batch in loader for step in
                                model.iter_modules(pixel_values=batch["pixel_values"], last_module=1)
                                if step.index == 1])  # fmt: skip
    torch.testing.assert_close(third, recomputed, rtol=1e-5, atol=1e-6)


def test_the_previous_in_memory_cache_counts_against_the_budget(
    tmp_path, digits, make_cifar_resnet, monkeypatch, caplog
):
    train = digits["train"].select(range(256))
    sizes = {}
    for where, budget in (("unbounded", None), ("bounded", "to be set")):
        spy = CacheSpy(monkeypatch)
        torch.manual_seed(0)
        model = TRGLModel.from_base(make_cifar_resnet(num_labels=10, num_channels=1), TRGLConfig(num_modules=3))
        if where == "bounded":  # room for either cache alone, not for both at once
            budget = f"{max(sizes['first'], sizes['second']) + 1}B"
            assert sizes["first"] + sizes["second"] > parse_bytes(budget)
        args = _sequential_args(tmp_path / where, trgl_prefix_cache_max_memory=budget)
        with caplog.at_level("INFO", logger="trgl_hf"):
            TRGLTrainer(model=model, args=args, train_dataset=train).train()
        sizes = sizes or dict(zip(("first", "second"), spy.sizes))
    assert [cache.on_disk for cache, _, _ in spy.caches] == [False, True]
    assert "of the previous cache, in memory while this one is built" in caplog.text
