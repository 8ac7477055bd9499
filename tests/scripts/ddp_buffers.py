"""Launched on 2 CPU processes by tests/integration/distributed/test_distributed.py: a BatchNorm model trained
sequentially, recording every rank's buffers when each phase's evaluation starts and when each phase begins (after its
prefix cache is built)."""

import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

import trgl_hf
from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

out = Path(sys.argv[1])


class RecordBuffers(TrainerCallback):
    def __init__(self):
        self.events = 0

    def save(self, args, state, model, when):
        if model is None:
            return
        net = trgl_hf.TRGLModel
        buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
        rank = torch.distributed.get_rank()
        torch.save(buffers, out / f"{when}-{self.events:02d}-rank{rank}.pt")
        self.events += 1
        assert net is not None

    def on_phase_begin(self, args, state, control, model=None, **kwargs):
        self.save(args, state, model, "begin")

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.save(args, state, model, "evaluate")


torch.manual_seed(0)
config = trgl_hf.CifarResNetConfig(num_channels=1, depths=[1, 1, 1], hidden_sizes=[4, 8, 8], embedding_size=4,
                                   num_labels=10, image_size=8)  # fmt: skip
model = TRGLModel.from_base(trgl_hf.CifarResNetForImageClassification(config), TRGLConfig(num_modules=3))
digits = trgl_hf.load_digits_dataset()
args = TRGLTrainingArguments(output_dir=str(out / "run"), trgl_mode="sequential", max_steps=3,
                             per_device_train_batch_size=16, learning_rate=0.05, optim="sgd", report_to="none",
                             save_strategy="no", disable_tqdm=True, seed=0, max_grad_norm=1.0)  # fmt: skip
assert args.use_cpu, "CPU processes must be detected without flags"
trainer = TRGLTrainer(model=model, args=args, train_dataset=digits["train"].select(range(128)),
                      eval_dataset=digits["validation"].select(range(32)), callbacks=[RecordBuffers()])  # fmt: skip
trainer.train()
