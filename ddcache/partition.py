"""Who reads which sample in which epoch: seeded per-epoch permutations split by (rank, worker).

Pure functions, no I/O. The streaming dataflow (``ddcache.dataflow``) uses
them so that, per epoch, every selected sample is read exactly once across
``world`` training ranks x ``num_workers`` reader processes per rank.

Layout of one epoch over a selection ``S`` (sorted global indices):

    order = S[epoch_permutation(len(S), seed, epoch)]         # same in every process
    part  = order[slot :: world * num_workers]                 # strided
    slot  = rank * num_workers + worker

Strided (not contiguous) slices: any two parts differ in size by at most 1,
for every ``(world, num_workers)``, and each part is itself a uniformly
shuffled subset. The union of the ``world * num_workers`` parts is ``order``
and the parts are disjoint (they are residue classes of positions).
"""
import numpy as np


def epoch_permutation(n, seed, epoch):
    """A permutation of ``range(n)`` (int64 array) determined by ``(seed, epoch)`` alone.

    Same arguments -> same permutation on every machine and numpy version
    that keeps PCG64 stable (numpy guarantees that for ``Generator``);
    different epochs give independent permutations.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0 (got seed={seed}, epoch={epoch})")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(epoch)])))
    return rng.permutation(n).astype(np.int64)


def check_slot(rank, world, worker, num_workers):
    """ValueError unless ``0 <= rank < world`` and ``0 <= worker < num_workers``."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of world {world}: need world >= 1 and 0 <= rank < world")
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} of {num_workers}: need num_workers >= 1 and 0 <= worker < num_workers")


def partition(indices, rank=0, world=1, worker=0, num_workers=1):
    """The part of ``indices`` (1-D sequence, e.g. an epoch order) read by ``(rank, worker)``.

    Strided: positions ``rank * num_workers + worker``, then every
    ``world * num_workers``-th. Order within the part follows ``indices``.
    Returns an int64 array; sizes over all slots differ by at most 1.
    """
    check_slot(rank, world, worker, num_workers)
    indices = np.asarray(indices, dtype=np.int64)
    return indices[rank * num_workers + worker::world * num_workers]


def part_size(n, rank=0, world=1, worker=0, num_workers=1):
    """Number of elements :func:`partition` gives ``(rank, worker)`` out of ``n`` (no array built)."""
    check_slot(rank, world, worker, num_workers)
    slot, stride = rank * num_workers + worker, world * num_workers
    return max(0, (n - slot + stride - 1) // stride)


def rank_size(n, rank=0, world=1, num_workers=1):
    """Samples rank ``rank`` reads per epoch, summed over its ``num_workers`` workers."""
    return sum(part_size(n, rank, world, w, num_workers) for w in range(num_workers))
