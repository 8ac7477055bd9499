"""Launched by tests/integration/distributed/test_fsdp.py: train a tiny model in each given mode and save it with
`trainer.save_model`.

`python fsdp_train.py OUT FAMILY MODE...`: on 2 processes with FSDP2 (`fsdp=True`, `fsdp_version: 2`, unless the
launcher's accelerate FSDP config asks for it) at 8 rows per process. The test runs `train(..., world=1)` in its own
process as the reference: without FSDP at 8 rows and 2 accumulation steps (the same global batch of 16, in the same
order, BatchNorm normalising the same 8 rows). BatchNorm running statistics are frozen (momentum 0) so that frozen
modules normalise alike in both runs.
"""

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    ResNetConfig,
    ResNetForImageClassification,
    TrainerCallback,
)

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments


def data(family: str, rows: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    if family in ("bert", "gpt2"):
        columns = {"input_ids": rng.integers(1, 50, (rows, 8)), "attention_mask": np.ones((rows, 8), dtype=np.int64)}
    else:
        columns = {"pixel_values": rng.standard_normal((rows, 3, 16, 16)).astype(np.float32)}
    return Dataset.from_dict({**columns, "labels": rng.integers(0, 3, rows)}).with_format("torch")


def build(family: str) -> TRGLModel:
    torch.manual_seed(0)
    if family == "bert":
        base = BertForSequenceClassification(BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
            classifier_dropout=0.0))  # fmt: skip
        return TRGLModel.from_base(base, TRGLConfig(num_modules=2))
    if family == "gpt2":
        base = GPT2ForSequenceClassification(GPT2Config(
            vocab_size=50, n_embd=16, n_layer=4, n_head=2, n_positions=16, num_labels=3, pad_token_id=0,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))  # fmt: skip
        return TRGLModel.from_base(base, TRGLConfig(num_modules=2))
    base = ResNetForImageClassification(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16],
                                                     depths=[2, 2], layer_type="basic", num_labels=3))  # fmt: skip
    for module in base.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.0
    return TRGLModel.from_base(base, TRGLConfig(num_modules=2, aux_head="linear", image_size=16))


class StopInPhase(TrainerCallback):
    """Kill the run (an exception on every process) at the first step of a phase, as a crash would."""

    def __init__(self, phase: str):
        self.phase, self.current = phase, None

    def on_phase_begin(self, args, state, control, phase=None, **kwargs):
        self.current = phase.name

    def on_step_begin(self, args, state, control, **kwargs):
        if self.current == self.phase:
            raise KeyboardInterrupt(f"stopped in {self.phase}")


def train(out: Path, family: str, modes: list[str], world: int) -> None:
    """Train `family` in every mode of `modes`; write `out/init.safetensors` and `out/<mode>/{run,saved,final}`.

    `TRGL_TEST_STOP_IN=<phase>` stops the run at that phase's first step; `TRGL_TEST_RESUME=1` resumes the run;
    `TRGL_TEST_OPTIM` replaces the optimizer (SGD); `TRGL_TEST_RESHARD=false` keeps gathered parameters from forward
    to backward."""
    stop, resume = os.environ.get("TRGL_TEST_STOP_IN"), os.environ.get("TRGL_TEST_RESUME") == "1"
    if int(os.environ.get("RANK", "0")) == 0 and not resume:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in build(family).state_dict().items()}, out / "init.safetensors")
    from_accelerate = os.environ.get("ACCELERATE_USE_FSDP") == "true"  # `accelerate launch --use_fsdp ...`
    for mode in modes:
        config = {"fsdp_version": 2, "reshard_after_forward": os.environ.get("TRGL_TEST_RESHARD", "true") == "true"}
        fsdp = {"fsdp": True, "fsdp_config": config} if world > 1 and not from_accelerate else {}
        args = TRGLTrainingArguments(
            output_dir=str(out / mode / "run"), trgl_mode=mode, max_steps=3, per_device_train_batch_size=8,
            gradient_accumulation_steps=2 if world == 1 else 1, learning_rate=0.05, report_to="none",
            optim=os.environ.get("TRGL_TEST_OPTIM", "sgd"),
            save_strategy="no", disable_tqdm=True, seed=0, max_grad_norm=0.1, use_cpu=True, logging_steps=1,
            train_sampling_strategy="random" if mode == "multilap" else "sequential", per_device_eval_batch_size=8,
            **fsdp,
        )  # fmt: skip
        trainer = TRGLTrainer(
            model=build(family),
            args=args,
            train_dataset=data(family, 64, 1),
            eval_dataset=data(family, 16, 2),
            callbacks=[StopInPhase(stop)] if stop else None,
        )
        trainer.train(resume_from_checkpoint=resume or None)
        trainer.save_model(str(out / mode / "saved"))  # the chosen stage, gathered from the shards
        if trainer.is_world_process_zero():  # the whole model, as the run keeps it
            shutil.copytree(sorted((out / mode / "run").glob("trgl-progress-*"))[-1], out / mode / "final")
        if world > 1:
            from torch.distributed.tensor import DTensor

            assert all(isinstance(p, DTensor) for p in trainer.model.parameters()), "every parameter is sharded"


if __name__ == "__main__":
    train(Path(sys.argv[1]), sys.argv[2], sys.argv[3:], int(os.environ.get("WORLD_SIZE", "1")))
