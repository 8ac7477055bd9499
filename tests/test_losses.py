import torch

from trgl_hf.losses import branch_energy, task_loss, transport_cost, transport_weight_from_tau, trgl_loss


def test_transport_cost_is_sum_of_mean_squares():
    first, second = torch.randn(3, 4, 5, 5), torch.randn(3, 8)
    expected = (first**2).sum() / first.numel() + (second**2).sum() / second.numel()
    torch.testing.assert_close(transport_cost([first, second]), expected)


def test_branch_energy_is_float32_under_low_precision():
    residual = torch.randn(2, 3, dtype=torch.bfloat16)
    assert branch_energy(residual).dtype == torch.float32


def test_transport_weight_and_vangl():
    assert transport_weight_from_tau(2.0) == 0.25
    assert transport_weight_from_tau(float("inf")) == 0.0
    task = torch.tensor(1.0)
    assert trgl_loss(task, torch.tensor(8.0), 0.25).item() == 3.0
    assert trgl_loss(task, torch.tensor(8.0), 0.0) is task


def test_task_loss_label_smoothing():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(
        task_loss(logits, labels, 0.1), torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    )
