"""LMDB store: the two halves of the on-disk format (writer used by the build, reader used by everything else).

Facts this module is built around (py-lmdb >= 2): one process may hold one
environment per path; an environment inherited through fork must not be
used. So readers open lazily, keep one env per (process, path), and drop an
inherited env before opening their own. Writers commit in batches and grow
the map when it is full.
"""
import os
from pathlib import Path

import lmdb
import msgpack
import numpy as np

from .codec import checksum, decode_record
from .errors import CorruptRecordError, UserError
from .manifest import read_manifest, record_key

_META_PREFIX = b"__"
_INITIAL_MAP_SIZE = 1 << 30
_READ_ENVS = {}  # path -> (pid, env)


class LmdbWriter:
    """Append records and build state into one LMDB environment, one transaction per batch."""

    def __init__(self, path, map_size=_INITIAL_MAP_SIZE):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(self.path), map_size=int(map_size), subdir=True, readahead=False, meminit=False)

    def get_meta(self, name):
        """A msgpack-decoded build-state value, or None."""
        with self.env.begin() as txn:
            raw = txn.get(_META_PREFIX + name.encode())
        return None if raw is None else msgpack.unpackb(raw, raw=False)

    def iter_meta(self, prefix):
        """(name, value) for meta keys starting with ``prefix``, in key order."""
        start = _META_PREFIX + prefix.encode()
        with self.env.begin() as txn:
            cursor = txn.cursor()
            if cursor.set_range(start):
                for k, v in cursor:
                    if not k.startswith(start):
                        break
                    yield k[len(_META_PREFIX):].decode(), msgpack.unpackb(v, raw=False)

    def get_raw(self, key):
        with self.env.begin() as txn:
            return txn.get(key.encode())

    def commit(self, records, meta):
        """Write ``records`` [(key, bytes)] and ``meta`` {name: value} atomically.

        Either all of it is durable after return or none of it is (LMDB
        transaction), which is what makes a SIGKILLed build resumable.
        """
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, raw in records:
                        txn.put(key.encode(), raw)
                    for name, value in meta.items():
                        txn.put(_META_PREFIX + name.encode(), msgpack.packb(value, use_bin_type=True))
                return
            except lmdb.MapFullError:
                self._grow()

    def _grow(self):
        new_size = int(self.env.info()["map_size"] * 2)
        self.env.set_mapsize(new_size)

    def delete_meta(self, prefix):
        """Remove build-state keys (done before publishing: a finished cache holds records only)."""
        start = _META_PREFIX + prefix.encode()
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor()
            if cursor.set_range(start):
                while cursor.key().startswith(start):
                    if not cursor.delete():
                        break

    def close(self):
        self.env.sync(True)
        self.env.close()


def open_readonly(path):
    """This process's read-only env for ``path`` (shared by every reader of it in the process)."""
    path = str(Path(path).resolve())
    pid = os.getpid()
    entry = _READ_ENVS.get(path)
    if entry is not None:
        owner, env = entry
        if owner == pid:
            return env
        # Inherited through fork: unusable here, and py-lmdb refuses a second open while it exists.
        try:
            env.close()
        except Exception:
            pass
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True, max_readers=512)
    except lmdb.Error as exc:
        raise UserError(f"{path}: cannot open LMDB environment ({exc})") from None
    check_not_truncated(env, path)
    _READ_ENVS[path] = (pid, env)
    return env


def check_not_truncated(env, path):
    """UserError if data.mdb is shorter than the pages LMDB says it uses.

    Reading a page past the end of a memory-mapped file kills the process
    with SIGBUS instead of raising, so this is checked before any read.
    """
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    if size < needed:
        env.close()
        raise UserError(f"{path}: data.mdb is truncated ({size} bytes, LMDB needs {needed})")


class CacheReader:
    """Random access to one cache or to a list of shard caches read as one dataset.

    Global index ``i`` runs over the caches in the order given. Nothing is
    opened until the first record is read, so a reader can be created in a
    parent process and used in forked workers.
    """

    def __init__(self, paths):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise UserError("no cache given")
        self.manifests = [read_manifest(p) for p in self.paths]
        first = self.manifests[0]
        for path, m in zip(self.paths[1:], self.manifests[1:]):
            for field in ("dataset", "mode", "schema_version"):
                if m[field] != first[field]:
                    raise UserError(f"{path}: {field} {m[field]!r} differs from {self.paths[0]} ({first[field]!r})")
        self.sizes = [m["counts"]["num_samples"] for m in self.manifests]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def __len__(self):
        return int(self.offsets[-1])

    def locate(self, index):
        """Global index -> (cache position, LMDB key)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return shard, record_key(int(index - self.offsets[shard]))

    def index_column(self, name):
        """A per-record statistic from the manifests (num_rows / num_cols / num_cells), concatenated."""
        return np.concatenate([np.asarray(m["index"][name], dtype=np.int64) for m in self.manifests])

    def get_raw(self, index):
        shard, key = self.locate(index)
        env = open_readonly(self.paths[shard])
        with env.begin(buffers=False) as txn:
            raw = txn.get(key.encode())
        if raw is None:
            raise CorruptRecordError(key, f"missing from {self.paths[shard]} (truncated cache?)")
        return raw

    def get(self, index, with_image=True, check=False):
        """Decoded sample (CONTRACTS.md) with ``index`` set; ``check`` also verifies the checksum."""
        raw = self.get_raw(index)
        shard, key = self.locate(index)
        if check:
            expected = self.manifests[shard]["checksums"][index - int(self.offsets[shard])]
            if checksum(raw) != expected:
                raise CorruptRecordError(key, f"checksum mismatch in {self.paths[shard]}")
        sample = decode_record(key, raw, with_image=with_image)
        sample["index"] = int(index)
        return sample
