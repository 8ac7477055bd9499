"""The conv auxiliary head trains on a batch of one row pooled to 1x1 with BatchNorm's running statistics, left
unchanged (a real run ending on such a batch: tests/integration/models/test_aux_heads.py)."""

from __future__ import annotations

import torch

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
