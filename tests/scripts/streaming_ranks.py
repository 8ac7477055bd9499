"""Launched on 2 CPU processes by tests/integration/distributed/test_distributed.py: sequential training on a streaming
dataset; every rank records a fingerprint (the pixel sum) of each row it trains on, per phase and step."""

import json
import sys
from pathlib import Path

import torch

import trgl_hf
from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

out = Path(sys.argv[1])


class Recording(TRGLTrainer):
    seen: list = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        sums = inputs["pixel_values"].double().sum(dim=(1, 2, 3)).tolist()
        self.seen.append({"phase": self.phase.name, "rows": [round(value, 6) for value in sums]})
        return super().training_step(model, inputs, num_items_in_batch)


torch.manual_seed(0)
config = trgl_hf.CifarResNetConfig(num_channels=1, depths=[1, 1, 1], hidden_sizes=[4, 8, 8], embedding_size=4,
                                   num_labels=10, image_size=8)  # fmt: skip
model = TRGLModel.from_base(trgl_hf.CifarResNetForImageClassification(config), TRGLConfig(num_modules=3))
stream = trgl_hf.load_digits_dataset()["train"].select(range(256)).to_iterable_dataset(num_shards=4)
args = TRGLTrainingArguments(output_dir=str(out / "run"), trgl_mode="sequential", max_steps=2,
                             per_device_train_batch_size=8, learning_rate=0.05, optim="sgd", report_to="none",
                             save_strategy="no", disable_tqdm=True, seed=0, trgl_save_stages=False)  # fmt: skip
trainer = Recording(model=model, args=args, train_dataset=stream)
trainer.train()
rank = torch.distributed.get_rank()
(out / f"seen-rank{rank}.json").write_text(json.dumps(trainer.seen))
