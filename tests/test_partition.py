"""Per-epoch permutations and (rank, worker) partitioning: exactly once, balanced, reproducible."""
import numpy as np
import pytest

from ddcache.partition import epoch_permutation, part_size, partition, rank_size


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
@pytest.mark.parametrize("world,workers", [(1, 1), (1, 3), (2, 2), (3, 4), (4, 1)])
def test_parts_cover_each_index_once_and_are_balanced(n, world, workers):
    order = epoch_permutation(n, seed=5, epoch=2)
    parts = [partition(order, r, world, w, workers) for r in range(world) for w in range(workers)]
    joined = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    assert sorted(joined.tolist()) == list(range(n))  # union is everything, nothing twice
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == [part_size(n, r, world, w, workers) for r in range(world) for w in range(workers)]
    assert sum(rank_size(n, r, world, workers) for r in range(world)) == n


def test_partition_is_strided_and_keeps_order():
    order = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    # slot = rank * num_workers + worker = 1 * 2 + 1 = 3, stride = world * num_workers = 4
    assert partition(order, rank=1, world=2, worker=1, num_workers=2).tolist() == [6, 2]


@pytest.mark.parametrize("args", [(2, 2, 0, 1), (0, 1, 1, 1), (0, 0, 0, 1), (-1, 2, 0, 1)])
def test_bad_slots_raise(args):
    rank, world, worker, workers = args
    with pytest.raises(ValueError):
        partition(np.arange(4), rank, world, worker, workers)
