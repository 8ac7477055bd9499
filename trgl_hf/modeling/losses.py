"""The TRGL local objective: cross-entropy of a module's auxiliary head plus its transport (kinetic energy) cost."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


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


LM_LOGITS_CHUNK_BYTES = 64 * 1024**2
"""Float32 logits one chunk of a language model's loss may hold when `lm_loss_chunk_tokens` is unset (64 MiB: 524
tokens at a 32,000-token vocabulary, 334 at GPT-2's 50,257; a character vocabulary fits the whole batch)."""


def lm_loss_chunk_tokens(configured: int | None, vocab_size: int) -> int:
    """Tokens per chunk of the chunked next-token loss: `configured`, or as many as fit `LM_LOGITS_CHUNK_BYTES` of
    float32 logits over `vocab_size` classes."""
    if configured is not None:
        return int(configured)
    return max(1, LM_LOGITS_CHUNK_BYTES // (4 * max(1, vocab_size)))


def _chunk_nll_sum(
    logits_of: Callable[[torch.Tensor], torch.Tensor], label_smoothing: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def nll_sum(hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(hidden).float()
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
            label_smoothing=label_smoothing, reduction="sum",
        )  # fmt: skip

    return nll_sum


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    chunk_tokens: int,
    label_smoothing: float = 0.0,
    shift: bool = True,
) -> torch.Tensor:
    """The shifted next-token cross-entropy of a causal LM head (mean over the labels that are not -100, in float32,
    as transformers computes it), without ever holding the whole `(batch, length, vocab)` logits; with
    `shift=False`, the unshifted cross-entropy of a masked LM head (position t scored against `labels[:, t]`).

    The positions are cut into chunks of about `chunk_tokens` tokens (`chunk_tokens // batch` positions); each chunk's
    logits and loss are computed under `torch.utils.checkpoint` (non-reentrant), which keeps only the chunk's hidden
    states and recomputes its logits in backward, so one chunk's logits are alive at a time, in forward and in
    backward. Same value and gradients as the unchunked loss. When one chunk covers every position the loss is
    computed directly (nothing to bound; no recomputation).

    Args:
        hidden (`torch.Tensor`): the module's output `(batch, length, hidden)`.
        labels (`torch.Tensor`): token ids `(batch, length)`, -100 ignored; position t predicts `labels[:, t + 1]`
            (`labels[:, t]` without `shift`).
        logits_of (`Callable`): the head: hidden states `(batch, n, hidden)` to logits `(batch, n, vocab)`, position
            by position (a final norm, the LM projection, soft-capping).
        chunk_tokens (`int`): tokens per chunk (at least 1).
        label_smoothing (`float`): as in `F.cross_entropy`.
        shift (`bool`): whether position t is scored against the next token (causal LM) or its own (masked LM).
    """
    if chunk_tokens < 1:
        raise ValueError(f"`lm_loss_chunk_tokens` must be at least 1, got {chunk_tokens}.")
    batch, length = labels.shape[:2]
    if shift and length < 2:
        raise ValueError(f"A causal LM loss needs sequences of at least 2 tokens, got length {length}.")
    inputs, targets = (hidden[:, :-1], labels[:, 1:]) if shift else (hidden, labels)
    scored = targets.shape[1]
    count = targets.ne(-100).sum()
    nll_sum = _chunk_nll_sum(logits_of, label_smoothing)
    positions = max(1, chunk_tokens // batch)
    if positions >= scored:
        return nll_sum(inputs, targets) / count
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, scored, positions):
        part = (inputs[:, start : start + positions], targets[:, start : start + positions])
        total = total + checkpoint(nll_sum, *part, use_reentrant=False)
    return total / count


__all__ = [
    "BatchNormBranchEnergy",
    "LM_LOGITS_CHUNK_BYTES",
    "chunked_causal_lm_loss",
    "lm_loss_chunk_tokens",
    "DifferenceEnergy",
    "branch_energy",
    "token_mask_for",
    "transport_cost",
    "trgl_loss",
]
