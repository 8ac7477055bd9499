"""The prefix cache: column-wise shards in memory or memory-mapped on disk, batches gathered already padded, the
memory budget, incremental construction, and the determinism decision."""

from __future__ import annotations

import random

import pytest
import torch
from datasets import Dataset
from torch.utils.data import IterableDataset
from transformers import DataCollatorWithPadding, default_data_collator

from trgl_hf import TRGLTrainingArguments
from trgl_hf.training import prefix_cache
from trgl_hf.training.prefix_cache import (
    PrefixCache,
    ShardWriter,
    build_prefix_cache,
    parse_bytes,
    prefix_cache_decision,
)

TOKENS = ("trgl_hidden_states", "input_ids", "attention_mask")


def _ragged_batches(seed: int = 0, batches: int = 5, size: int = 4):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        lengths = torch.randint(1, 7, (size,), generator=generator)
        longest = int(lengths.max())
        mask = (torch.arange(longest)[None, :] < lengths[:, None]).long()
        yield {
            "trgl_hidden_states": torch.randn(size, longest, 3, generator=generator),
            "input_ids": torch.randint(5, 50, (size, longest), generator=generator) * mask,
            "attention_mask": mask,
            "labels": torch.randint(0, 2, (size,), generator=generator),
        }


def _expected_rows(batches):
    rows = []
    for batch in batches:
        for index, length in enumerate(batch["attention_mask"].sum(1).tolist()):
            rows.append({name: value[index][:length] if name in TOKENS else value[index] for name, value in
                         batch.items()})  # fmt: skip
    return rows


@pytest.mark.parametrize("on_disk", [False, True])
def test_ragged_rows_come_back_padded_per_batch_from_memory_and_disk(tmp_path, monkeypatch, on_disk):
    monkeypatch.setattr(prefix_cache, "SHARD_BYTES", 300)  # several shards
    writer = ShardWriter(tmp_path if on_disk else None, "rank-000", TOKENS, None)
    for batch in _ragged_batches():
        writer.add(batch)
    writer.flush()
    assert len(writer.shards) > 2
    assert all((shard.path is not None) == on_disk for shard in writer.shards)
    cache = PrefixCache(writer.shards, {"input_ids": 1})
    rows = _expected_rows(_ragged_batches())
    assert len(cache) == len(rows) == 20
    order = [17, 2, 9, 0, 13]  # rows of several shards, out of order
    batch = cache.gather(order)
    longest = max(len(rows[i]["input_ids"]) for i in order)
    assert batch["trgl_hidden_states"].shape == (5, longest, 3) and batch["input_ids"].shape == (5, longest)
    for position, index in enumerate(order):
        length = len(rows[index]["input_ids"])
        assert torch.equal(batch["trgl_hidden_states"][position, :length], rows[index]["trgl_hidden_states"])
        assert torch.equal(batch["input_ids"][position, :length], rows[index]["input_ids"])
        assert (batch["input_ids"][position, length:] == 1).all()  # the model's pad id
        assert (batch["attention_mask"][position, length:] == 0).all()
        assert batch["labels"][position] == rows[index]["labels"]
    view = cache.select([3, 1])
    assert len(view) == 2 and torch.equal(view.gather([1])["labels"], cache.gather([1])["labels"])
    assert torch.equal(cache.__getitems__(order)[0]["labels"], batch["labels"])


def test_sizes_and_budgets_are_read():
    assert parse_bytes("1GiB") == 1024**3 and parse_bytes("500MB") == 500 * 1000**2 and parse_bytes(7) == 7
    with pytest.raises(ValueError, match="as a size"):
        parse_bytes("a lot")
    with pytest.raises(ValueError, match="trgl_prefix_cache_max_memory|as a size"):
        TRGLTrainingArguments(output_dir="unused", trgl_prefix_cache_max_memory="lots", use_cpu=True)


def test_the_budget_decides_memory_or_disk(tmp_path, caplog):
    def build(budget):
        return build_prefix_cache(iter(list(_ragged_batches())), 20, folder=tmp_path / "cache", budget=budget,
                                  dtype=None, token_columns=TOKENS, pad_values={}, first_module=1, lap=1)  # fmt: skip

    with caplog.at_level("INFO", logger="trgl_hf"):
        small = build(10)
        large = build(10**9)
    assert small.on_disk and list((tmp_path / "cache").glob("*.safetensors"))
    assert not large.on_disk
    assert "over the budget" in caplog.text and "within the budget" in caplog.text
    for name, value in large.gather(range(20)).items():
        assert torch.equal(small.gather(range(20))[name], value), name
    small.remove()
    assert not (tmp_path / "cache").exists()


def test_the_default_budget_respects_the_cgroup_limit(tmp_path, monkeypatch, caplog):
    """Without `trgl_prefix_cache_max_memory`, the budget is 25% of what the process's cgroup limit leaves when that is
    less than `MemAvailable` (a container): 8 GiB free on the machine, 4 KiB left in the group -> on disk."""
    from trgl_hf.training import memory_limits

    proc, cgroups = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 16777216 kB\nMemAvailable: {8 * 1024**2} kB\n")
    (proc / "self" / "cgroup").write_text("0::/job\n")
    (cgroups / "job").mkdir(parents=True)
    (cgroups / "cgroup.controllers").write_text("memory\n")
    (cgroups / "job" / "memory.max").write_text(f"{1024**2}\n")
    (cgroups / "job" / "memory.current").write_text(f"{1024**2 - 4096}\n")
    monkeypatch.setattr(memory_limits, "PROC_ROOT", proc)
    monkeypatch.setattr(memory_limits, "CGROUP_ROOT", cgroups)
    plan = prefix_cache.plan_storage(100.0, 20, None, tmp_path / "plan", world_size=1)
    assert plan.budget == 1024 and plan.folder == tmp_path / "plan"
    assert "cgroup v2 memory limit of /job" in plan.reason and "below MemAvailable" in plan.reason
    with caplog.at_level("INFO", logger="trgl_hf"):
        cache = build_prefix_cache(iter(list(_ragged_batches())), 20, folder=tmp_path / "cache", budget=None,
                                   dtype=None, token_columns=TOKENS, pad_values={}, first_module=1, lap=1)  # fmt: skip
    assert cache.on_disk and "over the budget of 0.0 MiB (25% of 0.0 MiB available: the cgroup v2" in caplog.text
    cache.remove()


def test_half_precision_storage_is_cast_back(tmp_path):
    batches = list(_ragged_batches())
    cache = build_prefix_cache(iter(batches), 20, folder=tmp_path, budget=None, dtype=torch.bfloat16,
                               token_columns=TOKENS, pad_values={}, first_module=1, lap=1)  # fmt: skip
    assert cache.shards[0].tensors["trgl_hidden_states"].dtype == torch.bfloat16
    hidden = cache.gather([0])["trgl_hidden_states"]
    assert hidden.dtype == torch.float32
    expected = batches[0]["trgl_hidden_states"][0, : hidden.shape[1]]
    torch.testing.assert_close(hidden[0], expected, rtol=1e-2, atol=1e-2)
    assert not torch.equal(hidden[0], expected)


def test_random_or_streaming_pipelines_are_not_cached_unless_asked():
    stored = Dataset.from_dict({"x": [1, 2, 3], "labels": [0, 1, 0]})
    assert prefix_cache_decision("auto", stored, default_data_collator)[0] is True
    streaming = stored.to_iterable_dataset().map(lambda row: {"x": row["x"] + random.random()})
    use, reason = prefix_cache_decision("auto", streaming, default_data_collator)
    assert use is False and "iterable" in reason

    class Stream(IterableDataset):
        def __iter__(self):
            yield {"x": 1}

    assert prefix_cache_decision("auto", Stream(), default_data_collator)[0] is False
    transformed = stored.with_transform(lambda batch: batch)
    assert "transform" in prefix_cache_decision("auto", transformed, default_data_collator)[1]
    assert prefix_cache_decision("auto", stored, lambda rows: rows)[0] is False
    assert prefix_cache_decision("auto", [{"x": 1}], DataCollatorWithPadding)[0] is False  # a list: unknown kind
    assert prefix_cache_decision("always", streaming, lambda rows: rows)[0] is True


def test_a_disk_cache_is_written_as_batches_arrive_never_held_whole(tmp_path, monkeypatch):
    import gc
    import weakref

    monkeypatch.setattr(prefix_cache, "SHARD_BYTES", 1)  # a shard per batch
    alive_when_yielded = []
    references = []

    def outputs():
        for batch in _ragged_batches(batches=12):
            gc.collect()
            alive_when_yielded.append(sum(ref() is not None for ref in references))
            references.append(weakref.ref(batch["trgl_hidden_states"]))
            yield batch

    cache = build_prefix_cache(outputs(), 48, folder=tmp_path, budget=1, dtype=None, token_columns=TOKENS,
                               pad_values={}, first_module=1, lap=1)  # fmt: skip
    assert cache.on_disk and len(cache) == 48
    assert max(alive_when_yielded) <= 2, alive_when_yielded  # earlier batches are on disk, not in memory
