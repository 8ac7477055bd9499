import itertools

import pytest

from trgl_hf.modeling.splitting import balanced_split, check_split, equal_split


def test_equal_split_gives_extra_blocks_to_first_modules():
    assert equal_split(9, 4) == [3, 2, 2, 2]
    assert equal_split(54, 16)[:6] == [4, 4, 4, 4, 4, 4] and sum(equal_split(54, 16)) == 54


def test_balanced_split_minimises_the_largest_module():
    costs = [8, 1, 1, 1, 1, 4, 2, 2]
    split = balanced_split(costs, 3)
    assert sum(split) == len(costs) and len(split) == 3
    best = min(
        max(sum(costs[a:b]) for a, b in zip((0, i, j), (i, j, len(costs))))
        for i, j in itertools.combinations(range(1, len(costs)), 2)
    )
    bounds = [0, split[0], split[0] + split[1], len(costs)]
    assert max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])) == best


@pytest.mark.parametrize("num_modules", [0, 10])
def test_bad_number_of_modules(num_modules):
    with pytest.raises(ValueError, match="num_modules"):
        equal_split(9, num_modules)


def test_split_must_cover_blocks():
    with pytest.raises(ValueError, match="sum to"):
        check_split([3, 3], 9)
