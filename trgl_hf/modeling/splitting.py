"""How a list of residual blocks is split into K consecutive modules."""

from __future__ import annotations

from collections.abc import Sequence


def equal_split(num_blocks: int, num_modules: int) -> list[int]:
    """Blocks per module when every module gets the same depth (the first modules take the remainder).

    Args:
        num_blocks (`int`): number of residual blocks.
        num_modules (`int`): number of modules K.

    Returns:
        `list[int]`: blocks per module, e.g. `equal_split(9, 4) == [3, 2, 2, 2]`.
    """
    check_num_modules(num_blocks, num_modules)
    base, extra = divmod(num_blocks, num_modules)
    return [base + 1 if k < extra else base for k in range(num_modules)]


def balanced_split(costs: Sequence[float], num_modules: int) -> list[int]:
    """Blocks per module minimising the largest module's cost (e.g. training activation memory).

    Exact dynamic programme over contiguous partitions (the paper's TRGL* / InfoPro* balancing).

    Args:
        costs (`Sequence[float]`): cost of each block, in order.
        num_modules (`int`): number of modules K.

    Returns:
        `list[int]`: blocks per module.
    """
    num_blocks = len(costs)
    check_num_modules(num_blocks, num_modules)
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + float(cost))
    infinity = float("inf")
    # best[k][i]: smallest achievable max-cost splitting the first i blocks into k modules.
    best = [[infinity] * (num_blocks + 1) for _ in range(num_modules + 1)]
    cut = [[0] * (num_blocks + 1) for _ in range(num_modules + 1)]
    best[0][0] = 0.0
    for k in range(1, num_modules + 1):
        for i in range(k, num_blocks + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i]:
                    best[k][i], cut[k][i] = value, j
    split, end = [], num_blocks
    for k in range(num_modules, 0, -1):
        start = cut[k][end]
        split.append(end - start)
        end = start
    return split[::-1]


def check_num_modules(num_blocks: int, num_modules: int) -> None:
    """Raise a `ValueError` unless 1 <= num_modules <= num_blocks."""
    if not 1 <= num_modules <= num_blocks:
        raise ValueError(
            f"Cannot cut {num_blocks} residual blocks into {num_modules} modules: "
            f"set `num_modules` between 1 and {num_blocks}."
        )


def check_split(split: Sequence[int], num_blocks: int) -> None:
    """Raise a `ValueError` unless `split` gives at least one block per module and sums to `num_blocks`."""
    if any(int(n) < 1 for n in split) or sum(split) != num_blocks:
        raise ValueError(
            f"`split` {list(split)} must give at least one block per module and sum to the model's "
            f"{num_blocks} residual blocks."
        )
