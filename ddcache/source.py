"""The cache source: this rank's share of every epoch of a cache, read by key and checked, in one process.

Nothing is loaded up front: the source holds the manifests (a few bytes per
record) and reads one record at a time by key from LMDB. LMDB is opened per
process in :meth:`CacheSource.reset_state` (``store.open_readonly``:
readonly, lock=False, no readahead); an environment inherited through fork
is dropped, never used.

Epochs: every ``__iter__`` is the next epoch, starting at ``start_epoch``.
Epoch ``e``'s order is a seeded permutation of the selected records (a
function of ``(seed, e)`` only), and rank ``r`` of ``world`` reads its
strided part of it (``ddcache.partition``), so over all ranks every selected
record is read exactly once per epoch without the ranks talking to each
other. Map workers that decode or preprocess get the records from this one
source (``ddcache.dataflows.map_records``), so each record of an epoch goes
to exactly one worker.

What it yields is small and typed: :class:`EncodedRecord` (the stored bytes,
checksum verified), or :class:`CorruptRecord` for a record that is missing or
fails its checksum -- a value, not an exception, so that it can travel
through map workers to the consumer, which raises it
(``CorruptRecordError`` naming the key) or counts it.
"""
from dataclasses import dataclass

from .codec import checksum
from .errors import CorruptRecordError
from .partition import check_rank, epoch_permutation, part_size, partition
from .selection import RecordFilter
from .store import CacheReader, open_readonly


@dataclass(frozen=True)
class EncodedRecord:
    """One stored record as read: its LMDB ``key``, global ``index`` over the caches, the ``epoch`` and the bytes."""

    key: str
    index: int
    epoch: int
    raw: bytes


@dataclass(frozen=True)
class CorruptRecord:
    """A record that cannot be used (missing, checksum mismatch, does not decode): the value that replaces it."""

    key: str
    reason: str

    def error(self):
        return CorruptRecordError(self.key, self.reason)


class CacheSource:
    """A tensorpack DataFlow (``reset_state``, ``__iter__``, ``__len__``) over one cache or a list of shard caches.

    Args:
      paths: a cache directory or a list of them (the global index runs over them in order).
      rank, world: this process's rank among ``world`` readers of the same caches.
      seed, shuffle: per-epoch permutation of the selection (unshuffled: key order every epoch).
      check: verify each record's blake2b checksum against the manifest
        (~0.1 ms per 100 KB record; catches flipped bytes that still decode).
      start_epoch: the epoch of the first ``__iter__`` (:meth:`set_epoch` changes it).
      record_filter: a :class:`~ddcache.selection.RecordFilter` applied to the
        manifests' index (nothing decoded); None keeps every record.

    ``len()`` is this rank's records per epoch; ranks differ by at most one.
    Raises UserError for a missing or invalid cache.
    """

    def __init__(self, paths, rank=0, world=1, seed=0, shuffle=True, check=True, start_epoch=0, record_filter=None):
        self.reader = CacheReader(paths)
        index = {name: self.reader.index_column(name) for name in ("num_rows", "num_cols", "num_cells")}
        self.selection = (record_filter or RecordFilter()).select(index)
        self.rank, self.world = int(rank), int(world)
        check_rank(self.rank, self.world)
        self.seed, self.shuffle, self.check = int(seed), bool(shuffle), bool(check)
        self.epoch = int(start_epoch)

    def __len__(self):
        return part_size(len(self.selection), self.rank, self.world)

    def set_epoch(self, epoch):
        """Make the next ``__iter__`` read epoch ``epoch`` (e.g. on resume)."""
        self.epoch = int(epoch)

    def reset_state(self):
        """Open this process's LMDB environments (an env inherited through fork is replaced)."""
        for path in self.reader.paths:
            open_readonly(path)

    def epoch_order(self, epoch):
        """All selected global indices (int64) in epoch ``epoch``'s order, identical in every process."""
        if not self.shuffle:
            return self.selection
        return self.selection[epoch_permutation(len(self.selection), self.seed, epoch)]

    def epoch_indices(self, epoch):
        """The global indices this rank reads in epoch ``epoch``, in reading order."""
        return partition(self.epoch_order(epoch), self.rank, self.world)

    def read(self, index, epoch=0):
        """The :class:`EncodedRecord` for global ``index`` (random access by key), or its :class:`CorruptRecord`."""
        index = int(index)
        shard, key = self.reader.locate(index)
        try:
            raw = self.reader.get_raw(index)
        except CorruptRecordError as exc:
            return CorruptRecord(exc.key, exc.reason)
        if self.check:
            expected = self.reader.manifests[shard]["checksums"][index - int(self.reader.offsets[shard])]
            if checksum(raw) != expected:
                return CorruptRecord(key, f"checksum mismatch in {self.reader.paths[shard]} (global index {index})")
        return EncodedRecord(key, index, int(epoch), raw)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        for index in self.epoch_indices(epoch):
            yield self.read(index, epoch)
