"""Who reads which record in which epoch: seeded per-epoch permutations split by rank.

Pure functions, no I/O. The cache source (``ddcache.source``) uses them so
that, per epoch, every selected record is read exactly once across ``world``
training ranks; inside a rank one source feeds all map workers, so each
record goes to exactly one of them.

Layout of one epoch over a selection ``S`` (sorted global indices):

    order = S[epoch_permutation(len(S), seed, epoch)]         # same in every process
    part  = order[rank :: world]                               # strided

Strided (not contiguous) slices: any two parts differ in size by at most 1,
for every ``world``, and each part is itself a uniformly shuffled subset.
The union of the ``world`` parts is ``order`` and the parts are disjoint
(they are residue classes of positions).
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


def check_rank(rank, world):
    """ValueError unless ``world >= 1`` and ``0 <= rank < world``."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of world {world}: need world >= 1 and 0 <= rank < world")


def partition(indices, rank=0, world=1):
    """The part of ``indices`` (1-D sequence, e.g. an epoch order) read by ``rank``: positions ``rank``,
    ``rank + world``, ... in the order of ``indices``. Returns an int64 array; sizes differ by at most 1."""
    check_rank(rank, world)
    return np.asarray(indices, dtype=np.int64)[rank::world]


def part_size(n, rank=0, world=1):
    """Number of elements :func:`partition` gives ``rank`` out of ``n`` (no array built)."""
    check_rank(rank, world)
    return max(0, (n - rank + world - 1) // world)
