"""Launched on 2 CPU processes by tests/integration/distributed/test_distributed.py: sequential training with the
prefix cache. When each cached phase begins, every rank records which rank wrote which shard and how many rows; rank 0
also records the whole shared cache and the cache one process computes alone from the data with the same weights."""

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import TrainerCallback, default_data_collator

import trgl_hf
from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments

out = Path(sys.argv[1])


class RecordCache(TrainerCallback):
    def __init__(self):
        self.trainer = None

    def on_phase_begin(self, args, state, control, model=None, **kwargs):
        cache = self.trainer.prefix_caches.current
        if cache is None or self.trainer.phase.cached_from is None:
            return
        rank = torch.distributed.get_rank()
        phase = self.trainer.phase.name
        rows = {}
        for path in sorted(cache.folder.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as handle:
                rows[path.name] = handle.get_slice("labels").get_shape()[0]
        record = {"rows": rows, "length": len(cache), "on_disk": cache.on_disk}
        (out / f"{phase}-rank{rank}.json").write_text(json.dumps(record))
        if rank == 0:
            shared = cache.gather(range(len(cache)))
            loader = torch.utils.data.DataLoader(train.with_format("torch"), batch_size=16,
                                                 collate_fn=default_data_collator)  # fmt: skip
            net = self.trainer.model
            net.eval()
            with torch.no_grad():
                alone = torch.cat([step.hidden_state for batch in loader for step in
                                   net.iter_modules(pixel_values=batch["pixel_values"],
                                                    last_module=self.trainer.phase.cached_from - 1)
                                   if step.index == self.trainer.phase.cached_from - 1])  # fmt: skip
            net.train()
            torch.save({"shared": shared["trgl_hidden_states"], "alone": alone, "labels": shared["labels"]},
                       out / f"{phase}-cache.pt")  # fmt: skip


torch.manual_seed(0)
config = trgl_hf.CifarResNetConfig(num_channels=1, depths=[1, 1, 1], hidden_sizes=[4, 8, 8], embedding_size=4,
                                   num_labels=10, image_size=8)  # fmt: skip
model = TRGLModel.from_base(trgl_hf.CifarResNetForImageClassification(config), TRGLConfig(num_modules=3))
train = trgl_hf.load_digits_dataset()["train"].select(range(100))
args = TRGLTrainingArguments(output_dir=str(out / "run"), trgl_mode="sequential", max_steps=3,
                             per_device_train_batch_size=16, learning_rate=0.05, optim="sgd", report_to="none",
                             save_strategy="no", disable_tqdm=True, seed=0, trgl_prefix_cache="always",
                             trgl_save_stages=False)  # fmt: skip
recorder = RecordCache()
trainer = TRGLTrainer(model=model, args=args, train_dataset=train, callbacks=[recorder])
recorder.trainer = trainer
trainer.train()
