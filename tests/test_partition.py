"""Per-epoch permutations and rank partitioning: exactly once, balanced, reproducible."""
import numpy as np
import pytest

from ddcache.partition import epoch_permutation, part_size, partition


def test_permutation_is_a_permutation_and_reproducible():
    p = epoch_permutation(101, seed=7, epoch=3)
    assert sorted(p.tolist()) == list(range(101))
    assert np.array_equal(p, epoch_permutation(101, seed=7, epoch=3))
    assert p.dtype == np.int64


def test_epochs_and_seeds_differ():
    base = epoch_permutation(200, seed=1, epoch=0)
    assert not np.array_equal(base, epoch_permutation(200, seed=1, epoch=1))
    assert not np.array_equal(base, epoch_permutation(200, seed=2, epoch=0))


@pytest.mark.parametrize("n", [0, 1, 5, 17, 64, 103])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_parts_cover_each_index_once_and_are_balanced(n, world):
    order = epoch_permutation(n, seed=5, epoch=2)
    parts = [partition(order, r, world) for r in range(world)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(n))  # union is everything, nothing twice
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [part_size(n, r, world) for r in range(world)]


def test_partition_is_strided_and_keeps_order():
    order = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert partition(order, rank=1, world=4).tolist() == [8, 4, 0]


@pytest.mark.parametrize("rank, world", [(2, 2), (0, 0), (-1, 2)])
def test_bad_ranks_raise(rank, world):
    with pytest.raises(ValueError):
        partition(np.arange(4), rank, world)
    with pytest.raises(ValueError):
        part_size(4, rank, world)
