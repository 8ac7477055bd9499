"""The conv auxiliary head in a real run whose last batch has one row: it trains, and the exported stage gives the TRGL
head's logits."""

from __future__ import annotations

import torch
from transformers import AutoModelForImageClassification

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments


def test_a_run_whose_last_batch_has_one_row_trains_and_its_stage_matches_the_head(digits, make_cifar_resnet, tmp_path):
    model = TRGLModel.from_base(make_cifar_resnet(), TRGLConfig(num_modules=2, aux_head="conv", head_pool_size=1))
    args = TRGLTrainingArguments(output_dir=str(tmp_path / "run"), trgl_mode="parallel", num_train_epochs=1,
                                 per_device_train_batch_size=8, learning_rate=0.05, optim="sgd", report_to="none",
                                 save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0)  # fmt: skip
    train = digits["train"].select(range(17))  # batches of 8, 8 and 1
    TRGLTrainer(model=model, args=args, train_dataset=train).train()
    pixel_values = torch.as_tensor(train[:3]["pixel_values"])
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).module_logits
    for stage in (1, 2):
        loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "run" / f"stage-{stage:02d}").eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, expected[:, stage - 1])
