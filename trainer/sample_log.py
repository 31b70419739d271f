"""Which training samples each process read: an opt-in record to check how ranks share the data.

With ``DDTRAIN_SAMPLE_LOG=DIR`` in the environment, every training process
appends one line ``EPOCH INDEX KEY`` per sample its source reads to
``DIR/rank-<R>.txt`` (``R`` = Horovod rank, 0 without Horovod; ``INDEX`` is
the global index over the caches given, ``KEY`` the record's LMDB key). With
Horovod the ranks of one data epoch must read disjoint parts that together
cover the training set; ``tests/test_horovod.py`` checks exactly that from
these files. Lines are written when the source reads a record, which runs a
few datapoints ahead of the training step (the input queue), so a file may
end a little past the last step.

Unset (the default), :func:`record_reads` returns the dataflow unchanged.
"""
import os
from pathlib import Path

from ddcache.source import EncodedRecord

ENV = "DDTRAIN_SAMPLE_LOG"


def log_path(directory, rank):
    """``DIR/rank-<rank>.txt``."""
    return Path(directory) / f"rank-{int(rank)}.txt"


class _Recorder:
    """Map function that appends ``epoch index key`` for each item and passes it on unchanged."""

    def __init__(self, path):
        self.path = Path(path)
        self._file = None

    def __call__(self, item):
        if self._file is None:  # opened in the process that iterates (never inherited through fork)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        if isinstance(item, EncodedRecord):  # a CorruptRecord (no index) stops the run anyway
            self._file.write(f"{item.epoch} {item.index} {item.key}\n")
        return item


def record_reads(df, rank, environ=None):
    """``df`` wrapped so that each item it yields is logged (when ``DDTRAIN_SAMPLE_LOG`` is set), else ``df``.

    ``df`` is the training source (``ddcache.source.CacheSource``): its
    ``EncodedRecord`` s carry ``epoch``, ``index`` and ``key``.
    """
    directory = (os.environ if environ is None else environ).get(ENV)
    if not directory:
        return df
    from tensorpack.dataflow import MapData

    return MapData(df, _Recorder(log_path(directory, rank)))


def read_log(path):
    """``[(epoch, index, key)]`` from one log file, in reading order."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        epoch, index, key = line.split()
        rows.append((int(epoch), int(index), key))
    return rows
