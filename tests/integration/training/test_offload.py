"""`trgl_offload="disk"`: modules a phase does not train live in their module files, with bit-identical results."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments
from trgl_hf.export.module_files import (
    FileMappings,
    is_module_folder,
    module_filename,
    module_tensors,
    read_module_folder,
    write_module_folder,
)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(config)


def token_rows(count: int = 32, length: int = 12, seed: int = 1) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (count, length), generator=generator)
    return [{"input_ids": row.tolist(), "labels": row.tolist()} for row in ids]


def args(folder, **overrides) -> TRGLTrainingArguments:
    settings = dict(output_dir=str(folder), trgl_mode="sequential", max_steps=3, per_device_train_batch_size=8,
                    learning_rate=1e-2, save_strategy="no", report_to="none", use_cpu=True, seed=0,
                    trgl_save_stages="none", logging_steps=1)  # fmt: skip
    return TRGLTrainingArguments(**{**settings, **overrides})


class Residency(TrainerCallback):
    """At every step: which modules' tensors lie in file mappings."""

    def __init__(self, model: TRGLModel):
        self.model, self.seen = model, []

    def on_step_end(self, args, state, control, **kwargs):
        mappings, groups = FileMappings(), module_tensors(self.model)
        mapped = {
            index for index in range(self.model.num_modules) if all(mappings.holds(t) for t in groups[index].values())
        }
        self.seen.append((tuple(self.model.trainable_modules), mapped))


def train(folder, build, dataset, callback: bool = False, **overrides) -> tuple[TRGLModel, list, list]:
    model = TRGLModel.from_base(build(), TRGLConfig(num_modules=3))
    spy = Residency(model)
    trainer = TRGLTrainer(model=model, args=args(folder, **overrides), train_dataset=dataset,
                          callbacks=[spy] if callback else None)  # fmt: skip
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return model, losses, spy.seen


@pytest.mark.parametrize("mode", ["sequential", "multilap"])
def test_an_offloaded_run_is_bit_identical_to_a_resident_one(tmp_path, mode):
    laps = {"trgl_laps": 2, "max_steps": 4} if mode == "multilap" else {}
    resident, resident_losses, _ = train(tmp_path / "none", tiny_llama, token_rows(), trgl_offload="none",
                                         trgl_mode=mode, **laps)  # fmt: skip
    offloaded, offloaded_losses, seen = train(tmp_path / "disk", tiny_llama, token_rows(), callback=True,
                                              trgl_offload="disk", trgl_mode=mode, **laps)  # fmt: skip
    assert offloaded_losses == resident_losses and len(resident_losses) > 3
    expected = resident.state_dict()
    for name, tensor in offloaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    for trainable, mapped in seen:  # only the trained module is in memory; every other one is in its file
        assert mapped == set(range(3)) - set(trainable), (trainable, mapped)
    assert not (tmp_path / "disk" / ".trgl-offload").exists()  # the start's files are removed with the run


def test_the_resident_run_keeps_every_module_in_memory(tmp_path):
    _, _, seen = train(tmp_path, tiny_llama, token_rows(), callback=True, trgl_offload="none")
    assert all(not mapped for _, mapped in seen)


def test_auto_offloads_sequential_runs_and_not_parallel_ones(tmp_path):
    _, _, sequential = train(tmp_path / "s", tiny_llama, token_rows(), callback=True)
    assert sequential[0][1] == {1, 2}
    _, _, parallel = train(tmp_path / "p", tiny_llama, token_rows(), callback=True, trgl_mode="parallel")
    assert all(not mapped for _, mapped in parallel)


def test_disk_offload_where_it_cannot_apply_is_refused(tmp_path):
    model = TRGLModel.from_base(tiny_llama(), TRGLConfig(num_modules=3))
    with pytest.raises(ValueError, match="parallel mode every module trains.*trgl_offload='auto'"):
        TRGLTrainer(model=model, args=args(tmp_path, trgl_mode="parallel", trgl_offload="disk"))
    with pytest.raises(ValueError, match="trgl_offload"):
        args(tmp_path, trgl_offload="cpu-and-disk")


def test_a_base_loaded_from_its_checkpoint_is_not_written_again(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    written = []
    original = os.replace

    def spy(source, target, *rest):
        written.append(str(target))
        return original(source, target, *rest)

    model = TRGLModel.from_base(str(tmp_path / "base"), TRGLConfig(num_modules=3))
    mappings, groups = FileMappings(), module_tensors(model)
    assert all(mappings.holds(t) for k, t in groups[2].items() if "heads" not in k)  # from_pretrained maps the files
    os.replace = spy
    try:
        TRGLTrainer(model=model, args=args(tmp_path / "run", trgl_offload="disk"), train_dataset=token_rows()).train()
    finally:
        os.replace = original
    offloaded = [path for path in written if ".trgl-offload" in path]
    assert offloaded == [str(tmp_path / "run" / ".trgl-offload" / module_filename(i)) for i in (1, 2)]


def test_a_phase_links_the_files_of_the_modules_it_did_not_train(tmp_path):
    model = TRGLModel.from_base(tiny_llama(), TRGLConfig(num_modules=3))
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    write_module_folder(model, first)
    with torch.no_grad():
        model.module_parameters(1)[0].add_(1.0)
    write_module_folder(model, second, changed={1}, previous=first)
    inode = {folder: {i: (folder / module_filename(i)).stat().st_ino for i in range(3)} for folder in (first, second)}
    assert inode[first][0] == inode[second][0] and inode[first][2] == inode[second][2]
    assert inode[first][1] != inode[second][1]
    assert is_module_folder(second)
    loaded = TRGLModel.from_pretrained(second)  # a sharded checkpoint whose shards are the modules
    expected = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    fresh = TRGLModel.from_base(tiny_llama(seed=3), TRGLConfig(num_modules=3))
    read_module_folder(fresh, second, mapped={0})
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_another_models_folder_is_refused(tmp_path):
    model = TRGLModel.from_base(tiny_llama(), TRGLConfig(num_modules=3))
    write_module_folder(model, tmp_path)
    other = TRGLModel.from_base(tiny_llama(), TRGLConfig(num_modules=2))
    with pytest.raises(ValueError, match="another model.s weights.*model that wrote it"):
        read_module_folder(other, tmp_path)


class StopAtPhase(TrainerCallback):
    """Stops the run (as a kill would) when module 2's phase starts."""

    def on_step_begin(self, args, state, control, **kwargs):
        if kwargs["model"].trainable_modules == (1,):
            raise RuntimeError("stopped")


def test_a_resident_run_resumes_offloaded_to_the_same_weights(tmp_path):
    whole, _, _ = train(tmp_path / "whole", tiny_llama, token_rows(), trgl_offload="none")
    model = TRGLModel.from_base(tiny_llama(), TRGLConfig(num_modules=3))
    stopped = TRGLTrainer(model=model, args=args(tmp_path / "run", trgl_offload="none"), train_dataset=token_rows(),
                          callbacks=[StopAtPhase()])  # fmt: skip
    with pytest.raises(RuntimeError, match="stopped"):
        stopped.train()
    model = TRGLModel.from_base(tiny_llama(seed=5), TRGLConfig(num_modules=3))  # other weights: all come from the run
    resumed = TRGLTrainer(model=model, args=args(tmp_path / "run", trgl_offload="disk"), train_dataset=token_rows())
    resumed.train(resume_from_checkpoint=True)
    expected = whole.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_filesystem_without_hard_links_gets_copies(tmp_path, monkeypatch):
    model = TRGLModel.from_base(tiny_llama(), TRGLConfig(num_modules=3))
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    write_module_folder(model, first)

    def no_links(*args, **kwargs):
        raise OSError("links are not supported here")

    monkeypatch.setattr(os, "link", no_links)
    write_module_folder(model, second, changed={1}, previous=first)
    assert (second / module_filename(0)).read_bytes() == (first / module_filename(0)).read_bytes()
    assert (second / module_filename(0)).stat().st_ino != (first / module_filename(0)).stat().st_ino
