"""The TRGL local objective: cross-entropy of a module's auxiliary head plus its transport (kinetic energy) cost."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def branch_energy(residual: torch.Tensor) -> torch.Tensor:
    """Kinetic energy of one residual branch: mean(r ** 2) over batch x features, in float32."""
    return residual.float().pow(2).mean()


class BatchNormBranchEnergy(torch.autograd.Function):
    """mean(r ** 2) of a residual branch that ends with a training-mode batch normalization, without keeping r.

    Autograd would save r = BN(x) for the gradient 2r / N of the energy: one extra branch-sized tensor per block, on
    top of x, which the normalization saves anyway. This function marks r as modified in place (no copy, nothing new
    saved but a reference to x) and recomputes r from x in float32 in the backward pass, where it is alive for one
    block at a time. The energy's value is the same as `branch_energy(r)` and its gradient matches to float32 rounding.

    `apply(r, x, weight, bias, eps)` returns `(r, energy)`: use the returned r in place of the normalization's output.
    """

    @staticmethod
    def forward(ctx, output, bn_input, weight, bias, eps):  # noqa: D102
        ctx.save_for_backward(bn_input, weight, bias)
        ctx.eps = eps
        ctx.mark_dirty(output)
        return output, branch_energy(output.detach())

    @staticmethod
    def backward(ctx, grad_output, grad_energy):  # noqa: D102
        bn_input, weight, bias = ctx.saved_tensors
        if grad_energy is None:  # (a zero weight never builds this graph: no host-side check of its value)
            return grad_output, None, None, None, None
        with torch.no_grad():
            residual = F.batch_norm(
                bn_input.float(), None, None,
                weight.float() if weight is not None else None, bias.float() if bias is not None else None,
                training=True, momentum=0.0, eps=ctx.eps,
            )  # fmt: skip
            residual.mul_(grad_energy.float() * 2.0 / residual.numel())
            if grad_output is not None:
                residual.add_(grad_output)
        return residual.to(bn_input.dtype if grad_output is None else grad_output.dtype), None, None, None, None


class DifferenceEnergy(torch.autograd.Function):
    """mean((after - before) ** 2) of a residual branch given as the change of the residual stream, without keeping
    the difference.

    In a transformer both ends of a branch are kept anyway (each is the input of a LayerNorm or a linear layer, which
    saves it for its own backward); autograd's plain energy would also keep `after - before`, one more stream-sized
    tensor per branch. This function saves only references to the two ends and recomputes the difference in
    backward. Same value as `branch_energy(after - before)`, gradients equal to float32 rounding.
    """

    @staticmethod
    def forward(ctx, after, before):  # noqa: D102
        ctx.save_for_backward(after, before)
        return branch_energy(after - before)

    @staticmethod
    def backward(ctx, grad_energy):  # noqa: D102
        after, before = ctx.saved_tensors
        gradient = (after.float() - before.float()).mul_(grad_energy.float() * 2.0 / after.numel())
        return gradient.to(after.dtype), (-gradient).to(before.dtype)


def transport_cost(residuals: Sequence[torch.Tensor]) -> torch.Tensor:
    """Discrete kinetic energy of a module: the sum over its residual branches r of mean(r ** 2).

    The mean runs over batch x features (the official code's normalisation; tau values are only meaningful with it)
    and is computed in float32 whatever the autocast dtype.

    Args:
        residuals (`Sequence[torch.Tensor]`): the residual-branch outputs of the module's blocks.

    Returns:
        `torch.Tensor`: a scalar; zero when `residuals` is empty.

    Example:
    ```python
    >>> transport_cost([torch.ones(2, 3), 2 * torch.ones(4)])
    tensor(5.)
    ```
    """
    if len(residuals) == 0:
        return torch.zeros(())
    return torch.stack([branch_energy(r) for r in residuals]).sum()


def trgl_loss(task: torch.Tensor, transport: torch.Tensor, transport_weight: float | torch.Tensor) -> torch.Tensor:
    """Combine a module's task loss and transport cost: `task + transport_weight * transport`.

    `transport_weight` comes from [`TransportSchedule.weight`] (a tensor on the device for the multipliers and the
    relative scale, so that nothing waits for the host); a plain 0 (VanGL) leaves the transport cost out of the graph.
    """
    if isinstance(transport_weight, (int, float)) and transport_weight == 0.0:
        return task
    return task + transport_weight * transport.to(task.device)


__all__ = [
    "BatchNormBranchEnergy",
    "DifferenceEnergy",
    "branch_energy",
    "transport_cost",
    "trgl_loss",
]
