import pytest
import torch

from trgl_hf.modeling.losses import (
    BatchNormBranchEnergy,
    branch_energy,
    transport_cost,
    trgl_loss,
)


def test_transport_cost_is_sum_of_mean_squares():
    first, second = torch.randn(3, 4, 5, 5), torch.randn(3, 8)
    expected = (first**2).sum() / first.numel() + (second**2).sum() / second.numel()
    torch.testing.assert_close(transport_cost([first, second]), expected)


def test_branch_energy_is_float32_under_low_precision():
    residual = torch.randn(2, 3, dtype=torch.bfloat16)
    assert branch_energy(residual).dtype == torch.float32


def test_trgl_loss_adds_the_weighted_transport_and_vangl_leaves_it_out():
    task = torch.tensor(1.0)
    assert trgl_loss(task, torch.tensor(8.0), 0.25).item() == 3.0
    assert trgl_loss(task, torch.tensor(8.0), 0.0) is task


@pytest.mark.parametrize("affine", [True, False])
def test_fused_batchnorm_energy_has_the_value_and_gradients_of_the_plain_energy(affine):
    torch.manual_seed(0)
    normalization = torch.nn.BatchNorm2d(4, affine=affine).train()
    if affine:
        torch.nn.init.normal_(normalization.weight)
        torch.nn.init.normal_(normalization.bias)
    shortcut = torch.randn(3, 4, 5, 5)
    results = []
    for fused in (False, True):
        x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
        branch = normalization(x * 2)
        if fused:
            branch, energy = BatchNormBranchEnergy.apply(branch, x * 2, normalization.weight, normalization.bias, 1e-5)
        else:
            energy = branch_energy(branch.clone())
        branch += shortcut  # the block's in-place addition
        loss = 0.3 * energy + torch.relu(branch).pow(3).mean()
        parameters = [x] + list(normalization.parameters())
        results.append((energy.detach(), torch.autograd.grad(loss, parameters)))
    torch.testing.assert_close(results[1][0], results[0][0])
    for fused_grad, plain_grad in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(fused_grad, plain_grad, rtol=1e-5, atol=1e-6)


def test_fused_batchnorm_energy_keeps_no_branch_copy():
    normalization = torch.nn.BatchNorm2d(4).train()
    saved_bytes = {}
    for fused in (False, True):
        x = torch.randn(8, 4, 6, 6, requires_grad=True)
        storages = {}

        def pack(tensor, storages=storages):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            branch = normalization(x)
            if fused:
                BatchNormBranchEnergy.apply(branch, x, normalization.weight, normalization.bias, 1e-5)
            else:
                branch_energy(branch.clone())
        saved_bytes[fused] = sum(storages.values())
    # the copy of the branch, less the reference to the bias (needed to recompute the branch)
    assert saved_bytes[False] - saved_bytes[True] == x.nbytes - normalization.bias.nbytes


def test_difference_energy_matches_plain_autograd_and_keeps_no_difference():
    from trgl_hf.modeling.losses import DifferenceEnergy

    before = torch.randn(4, 6, 8, requires_grad=True)
    results, saved_bytes = [], {}
    for recomputed in (False, True):
        storages = {}

        def pack(tensor, storages=storages):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            after = torch.sin(before).tanh()  # both ends are kept for their own backward, like LayerNorm inputs
            energy = DifferenceEnergy.apply(after, before) if recomputed else branch_energy(after - before)
        saved_bytes[recomputed] = sum(storages.values())
        results.append((energy.detach(), torch.autograd.grad(0.7 * energy + after.sum(), before)[0]))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])
    assert saved_bytes[False] - saved_bytes[True] == before.nbytes  # the difference is not kept
