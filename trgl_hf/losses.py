"""The TRGL local objective: cross-entropy of a module's auxiliary head plus its transport (kinetic energy) cost."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def token_mask_for(mask: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor | None:
    """A padding mask (`(batch, length)`, nonzero = a real token) as a boolean tensor broadcastable to `residual`
    (`(batch, length, ...)`); `None` when there is none.

    Raises:
        `ValueError`: the mask's shape is not the first two dimensions of the residual stream.
    """
    if mask is None:
        return None
    if mask.dim() != 2 or tuple(mask.shape) != tuple(residual.shape[:2]):
        raise ValueError(
            f"The attention mask has shape {tuple(mask.shape)} but the residual stream has shape "
            f"{tuple(residual.shape)}: the transport term on real tokens needs one mask entry per (row, position). "
            "Pass a 2-d `attention_mask` of the input's shape (1 = real token, 0 = padding)."
        )
    return mask.ne(0).reshape(*mask.shape, *([1] * (residual.dim() - 2)))


def _masked_mean_of_squares(values: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """mean(v ** 2) over all entries, or over the real tokens' entries (`real`: from [`token_mask_for`])."""
    squares = values.pow(2)
    if real is None:
        return squares.mean()
    count = real.sum(dtype=torch.float32) * math.prod(values.shape[2:])
    return torch.where(real, squares, 0.0).sum() / count.clamp_min(1.0)


def branch_energy(residual: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Kinetic energy of one residual branch, in float32: mean(r ** 2) over batch x features (the paper's
    normalisation), or, for padded text, over the real tokens x features.

    Args:
        residual (`torch.Tensor`): the branch output, `(batch, ...)`; with a mask, `(batch, length, ...)`.
        mask (`torch.Tensor`, *optional*): the padding mask `(batch, length)` (nonzero = real token). The energy is
            then sum over real positions of r ** 2 / (number of real positions x features): padded positions do not
            count, however many there are. An all-ones mask gives the plain mean.
    """
    return _masked_mean_of_squares(residual.float(), token_mask_for(mask, residual))


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
    backward. Same value as `branch_energy(after - before, mask)`, gradients equal to float32 rounding.

    `apply(after, before, mask)`: `mask` is the padding mask `(batch, length)` or `None` (see [`branch_energy`]).
    """

    @staticmethod
    def forward(ctx, after, before, mask=None):  # noqa: D102
        real = token_mask_for(mask, after)
        ctx.save_for_backward(after, before, real)
        return _masked_mean_of_squares((after - before).float(), real)

    @staticmethod
    def backward(ctx, grad_energy):  # noqa: D102
        after, before, real = ctx.saved_tensors
        difference = after.float() - before.float()
        if real is None:
            gradient = difference.mul_(grad_energy.float() * 2.0 / after.numel())
        else:
            count = (real.sum(dtype=torch.float32) * math.prod(after.shape[2:])).clamp_min(1.0)
            gradient = torch.where(real, difference, 0.0).mul_(grad_energy.float() * 2.0 / count)
        return gradient.to(after.dtype), (-gradient).to(before.dtype), None


def transport_cost(residuals: Sequence[torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    """Discrete kinetic energy of a module: the sum over its residual branches r of mean(r ** 2).

    The mean runs over batch x features (the official code's normalisation; tau values are only meaningful with it)
    and is computed in float32 whatever the autocast dtype. For padded text (`mask`), it runs over the real tokens x
    features, so that padding never changes the objective (see [`branch_energy`]).

    Args:
        residuals (`Sequence[torch.Tensor]`): the residual-branch outputs of the module's blocks.
        mask (`torch.Tensor`, *optional*): the padding mask `(batch, length)` of token residuals (nonzero = real).

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
    return torch.stack([branch_energy(r, mask) for r in residuals]).sum()


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
    "token_mask_for",
    "transport_cost",
    "trgl_loss",
]
