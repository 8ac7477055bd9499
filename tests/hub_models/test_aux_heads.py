"""The conv auxiliary head trains on a batch of one row pooled to 1x1 (BatchNorm with the running statistics, left
unchanged), and the exported stage gives the TRGL head's logits after such a batch."""

from __future__ import annotations

import torch
from transformers import AutoModelForImageClassification

from trgl_hf import TRGLConfig, TRGLModel, TRGLTrainer, TRGLTrainingArguments
from trgl_hf.models.aux_heads import ConvAuxHead


def trained_head() -> ConvAuxHead:
    """A conv head with pool size 1 whose running statistics have moved away from their initial values."""
    torch.manual_seed(0)
    head = ConvAuxHead(channels=4, num_labels=3, pool_size=1).train()
    head(torch.randn(8, 4, 5, 5))
    return head


def test_a_one_row_batch_trains_with_the_running_statistics_left_unchanged():
    head = trained_head()
    buffers = {name: value.clone() for name, value in head.named_buffers()}
    row = torch.randn(1, 4, 5, 5)
    logits = head(row)  # nn.BatchNorm2d: "Expected more than 1 value per channel when training"
    logits.sum().backward()
    assert head.conv.weight.grad.abs().sum() > 0 and head.norm.weight.grad.abs().sum() > 0
    for name, value in head.named_buffers():
        assert torch.equal(value, buffers[name]), f"{name} changed"
    with torch.no_grad():
        torch.testing.assert_close(logits, head.eval()(row), rtol=0, atol=0)
    # Any larger batch is normalised with (and updates) its own statistics, as by nn.BatchNorm2d.
    reference = torch.nn.BatchNorm2d(4)
    reference.load_state_dict(head.norm.state_dict())
    pooled = torch.randn(3, 4, 1, 1)
    torch.testing.assert_close(head.norm.train()(pooled), reference.train()(pooled), rtol=0, atol=0)
    torch.testing.assert_close(head.norm.running_var, reference.running_var, rtol=0, atol=0)
    assert int(head.norm.num_batches_tracked) == int(reference.num_batches_tracked) == 2


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
