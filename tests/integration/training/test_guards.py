"""Reliability: bad input refused before anything is written, interrupted runs lose nothing, numerics guarded."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification, GPT2Config, GPT2LMHeadModel

from trgl_hf import NonFiniteLossError, TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments


def tree_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def run_args(out, **overrides):
    settings = dict(output_dir=str(out), trgl_mode="sequential", max_steps=3, per_device_train_batch_size=32,
                    learning_rate=0.05, optim="sgd", report_to="none", save_strategy="no", disable_tqdm=True,
                    use_cpu=True, seed=0)  # fmt: skip
    settings.update(overrides)
    return TRGLTrainingArguments(**settings)


def digits_model(make_cifar_resnet, **config):
    base = make_cifar_resnet(num_labels=10, num_channels=1, depths=(1, 1, 1))
    return TRGLModel.from_base(base, TRGLConfig(**{"num_modules": 3, **config}))


def test_output_dir_of_a_different_run_is_refused_and_left_untouched(tmp_path, digits, make_cifar_resnet):
    train = digits["train"].select(range(128))
    TRGLTrainer(model=digits_model(make_cifar_resnet), args=run_args(tmp_path), train_dataset=train).train()
    before = tree_hash(tmp_path)
    trainer = TRGLTrainer(model=digits_model(make_cifar_resnet, tau=3.0), args=run_args(tmp_path),
                          train_dataset=train)  # fmt: skip
    with pytest.raises(ValueError, match="stages of a different run"):
        trainer.train()
    with pytest.raises(ValueError, match="different configuration"):
        trainer.train(resume_from_checkpoint=True)
    assert tree_hash(tmp_path) == before
    # the same configuration may start over in the same folder
    TRGLTrainer(model=digits_model(make_cifar_resnet), args=run_args(tmp_path), train_dataset=train).train()


def test_sequences_longer_than_the_positions_are_refused(tmp_path):
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))  # fmt: skip
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=2))
    rows = [list(range(20)) + list(range(12))] * 4
    dataset = Dataset.from_dict({"input_ids": rows, "labels": rows}).with_format("torch")
    with pytest.raises(ValueError, match="only 16 positions"):
        TRGLTrainer(model=model, args=run_args(tmp_path), train_dataset=dataset).train()
    assert not any(tmp_path.iterdir())


def test_pushing_without_credentials_is_refused(tmp_path, monkeypatch, digits, make_cifar_resnet):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(ValueError, match="no Hugging Face token"):
        TRGLTrainer(model=digits_model(make_cifar_resnet), train_dataset=digits["train"],
                    args=run_args(tmp_path, push_to_hub=True, hub_model_id="someone/run"))  # fmt: skip


def test_missing_or_corrupted_weights_and_wrong_folder_are_refused(tmp_path, make_cifar_resnet):
    model = digits_model(make_cifar_resnet)
    model.save_pretrained(tmp_path / "whole")
    model.export_stage(1).save_pretrained(tmp_path / "stage")
    weights = tmp_path / "whole" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupted"):
        TRGLModel.from_pretrained(tmp_path / "whole")
    weights.unlink()
    with pytest.raises(ValueError, match="no weights"):
        TRGLModel.from_pretrained(tmp_path / "whole")
    with pytest.raises(ValueError, match="not a whole TRGL model"):
        TRGLModel.from_pretrained(tmp_path / "stage")


def test_non_finite_loss_stops_with_module_and_step_and_keeps_finished_stages(tmp_path, digits, make_cifar_resnet):
    model = digits_model(make_cifar_resnet)
    head = model.heads[1]
    original = head.forward
    head.forward = lambda hidden: original(hidden) * float("inf")
    trainer = TRGLTrainer(model=model, args=run_args(tmp_path), train_dataset=digits["train"].select(range(128)))
    with pytest.raises(NonFiniteLossError, match="module 2 became .* at step 1"):
        trainer.train()
    AutoModelForImageClassification.from_pretrained(tmp_path / "stage-01")
    assert not (tmp_path / "stage-02").exists()


def test_same_seed_gives_identical_stage_weights(tmp_path, digits, make_cifar_resnet):
    for run in ("a", "b"):
        TRGLTrainer(model=digits_model(make_cifar_resnet), args=run_args(tmp_path / run, trgl_mode="multilap"),
                    train_dataset=digits["train"].select(range(256))).train()  # fmt: skip
    for stage in ("stage-01", "stage-02", "stage-03"):
        first, second = (load_file(tmp_path / run / stage / "model.safetensors") for run in ("a", "b"))
        assert all(torch.equal(first[name], second[name]) for name in first)


TRAINING_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from transformers.utils import logging
    logging.set_verbosity_error()
    from trgl_hf import (CifarResNetConfig, CifarResNetForImageClassification, TRGLConfig, TRGLModel, TRGLTrainer,
                         TRGLTrainingArguments, load_digits_dataset)
    out, resume = sys.argv[1], sys.argv[2] == "resume"
    torch.manual_seed(0)
    config = CifarResNetConfig(num_channels=1, depths=[1, 1, 1], hidden_sizes=[4, 8, 8], embedding_size=4,
                               num_labels=10, image_size=8)
    base = CifarResNetForImageClassification(config)
    model = TRGLModel.from_base(base, TRGLConfig(num_modules=3))
    args = TRGLTrainingArguments(output_dir=out, trgl_mode="sequential", num_train_epochs=2,
                                 per_device_train_batch_size=32, learning_rate=0.05, optim="sgd", report_to="none",
                                 save_strategy="steps", save_steps=3, disable_tqdm=True, use_cpu=True, seed=0)
    train = load_digits_dataset()["train"].select(range(192))
    TRGLTrainer(model=model, args=args, train_dataset=train).train(resume_from_checkpoint=resume or None)
    print("finished")
    """
)


@pytest.mark.slow  # 2 min; test_run_safety kills at every kind of write point in the default suite
def test_sigkill_at_random_points_never_leaves_a_broken_stage_and_resume_matches(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TRAINING_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.run([sys.executable, str(script), str(tmp_path / "reference"), "fresh"], env=env,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "finished" in reference.stdout, reference.stderr[-2000:]
    rng = random.Random(0)
    out = tmp_path / "killed"
    mode = "fresh"
    # Kill shortly after progress marks appear: inside module 1, then around the writes of stages 1 and 2.
    for trigger in ("phases/module-01/checkpoint-*", "stage-01", "stage-02"):
        process = subprocess.Popen([sys.executable, str(script), str(out), mode], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 240
        while not list(out.glob(trigger)) and process.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be interrupted"
        mode = "resume"
        for stage in sorted(out.glob("stage-*")):
            AutoModelForImageClassification.from_pretrained(stage)  # every visible stage folder is complete
        state = out / "trgl_state.json"
        if state.exists():
            json.loads(state.read_text())
    finished = subprocess.run([sys.executable, str(script), str(out), "resume"], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    assert "finished" in finished.stdout, finished.stderr[-2000:]
    for stage in ("stage-01", "stage-02", "stage-03"):
        expected = load_file(tmp_path / "reference" / stage / "model.safetensors")
        resumed = load_file(out / stage / "model.safetensors")
        for name, tensor in expected.items():
            torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=f"{stage} {name}")
