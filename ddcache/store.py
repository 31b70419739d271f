"""LMDB store: transactions on a cache's ``data.mdb`` (writes for ``ddcache.writer``, reads for everything else).

Facts this module is built around (py-lmdb >= 2): one process may hold one
environment per path; an environment inherited through fork must not be
used. So readers open lazily, keep one env per (process, path), and drop an
inherited env before opening their own. Every page read through an env stays
mapped into the process (and counted in its RSS) until the env is closed, so
readers close and reopen it after ``REMAP_BYTES`` (see :func:`read_value`).
The writer commits in batches and grows the map when it is full; what it
writes (keys, bookkeeping, the manifest) is decided by ``ddcache.writer``.
"""
import os
import threading
from pathlib import Path

import lmdb
import msgpack
import numpy as np

from . import shard_set
from .codec import checksum, decode_record
from .errors import CorruptRecordError, UserError
from .lmdb_file import DamagedFileError, check_data_file
from .manifest import read_manifest, record_key
from .regular_file import NotRegularFileError
from .schema import MAX_RECORD_BYTES

_META_PREFIX = b"__"
_READ_ENVS = {}  # resolved path -> [pid, env, bytes read through env]
_CHECKED = {}  # resolved path -> (size, mtime_ns, inode, device) of the data.mdb that passed check_lmdb_file
_READ_LOCK = threading.RLock()


def _new_read_lock():
    # A fork while another thread holds the lock would leave the child's copy locked forever.
    global _READ_LOCK
    _READ_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_new_read_lock)
REMAP_BYTES = 1 << 20  # see read_value: ~0.1 ms per reopen, ~40 MB mapped at most


class LmdbWriter:
    """Records and bookkeeping values (keys starting with ``__``) into one LMDB environment, a transaction per batch."""

    def __init__(self, path, map_size=1 << 30):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        drop_stale_envs()  # py-lmdb refuses a file whose recycled inode number a stale read env still holds
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
        """Remove the bookkeeping keys starting with ``prefix`` ("" = all of them), in one transaction."""
        start = _META_PREFIX + prefix.encode()
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor()
            if cursor.set_range(start):
                while cursor.key().startswith(start):
                    if not cursor.delete():
                        break

    def close(self):
        """Sync and close; then make ``data.mdb`` cover every page LMDB has allocated.

        A transaction may take pages past the end of the file and free them
        again before it commits (LMDB then never writes them: seen after
        deleting many keys), which leaves ``data.mdb`` shorter than its
        ``last_pgno`` says. Readers take such a file for a truncated one
        (``lmdb_file.check_data_file``, which guards against SIGBUS), so the
        file is extended with zero pages, which nothing references or reads.
        """
        needed = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
        self.env.sync(True)
        self.env.close()
        data = self.path / "data.mdb"
        if data.stat().st_size < needed:
            os.truncate(data, needed)


def open_readonly(path):
    """This process's read-only env for ``path`` (shared by every reader of it in the process).

    Checks ``data.mdb`` first (:func:`check_lmdb_file`), which also drops an
    env this process holds on a file that has since been replaced (a cache
    rebuilt with ``--overwrite``).
    """
    path = os.path.realpath(path)
    check_lmdb_file(path)
    return _read_entry(path)[1]


def check_lmdb_file(path):
    """UserError (one line) unless ``path``/data.mdb is a regular file LMDB can read without crashing.

    See :mod:`ddcache.lmdb_file`: a damaged tree would otherwise abort the
    process (SIGABRT / SIGBUS) inside LMDB, and a FIFO would block the open.
    Checked once per file version (size, mtime, inode) and process; forked
    workers inherit the result.
    """
    data = os.path.join(path, "data.mdb")
    try:
        st = os.stat(data)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        if _CHECKED.get(path) == stamp:
            return
        _drop_env(path)  # an env opened on an earlier version of this path would read the old file
        check_data_file(data)
    except DamagedFileError as exc:
        raise UserError(f"{data}: damaged LMDB file ({exc})") from None
    except NotRegularFileError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read data.mdb ({exc.strerror or exc})") from None
    _CHECKED[path] = stamp


def _read_entry(path):
    """The ``[pid, env, bytes_read]`` entry of resolved ``path`` in this process, opening the env if needed."""
    pid = os.getpid()
    with _READ_LOCK:
        entry = _READ_ENVS.get(path)
        if entry is not None:
            if entry[0] == pid:
                return entry
            # Inherited through fork: unusable here, and py-lmdb refuses a second open while it exists.
            _close_quietly(entry[1])
            del _READ_ENVS[path]
        check_lmdb_file(path)
        try:
            env = lmdb.open(path, readonly=True, lock=False, readahead=False, subdir=True, max_readers=512)
        except lmdb.Error as exc:
            raise UserError(f"{path}: cannot open LMDB environment ({exc})") from None
        entry = _READ_ENVS[path] = [pid, env, 0]
        return entry


def drop_stale_envs():
    """Close this process's read envs on caches that were deleted or replaced since they were opened."""
    with _READ_LOCK:
        for path in list(_READ_ENVS):
            try:
                st = os.stat(os.path.join(path, "data.mdb"))
                current = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev) == _CHECKED.get(path)
            except OSError:
                current = False
            if not current:
                _drop_env(path)


def _drop_env(path):
    with _READ_LOCK:
        entry = _READ_ENVS.pop(path, None)
        if entry is not None:
            _close_quietly(entry[1])


def _close_quietly(env):
    try:
        env.close()
    except Exception:
        pass


def read_value(path, key):
    """The bytes stored under ``key`` (bytes) in the cache at resolved ``path``; None if absent.

    One short read transaction per value, copied out (no buffer keeps the map
    alive). LMDB's pages stay mapped into this process for as long as the env
    is open, so streaming a large cache would grow RSS towards the size of the
    file; after ``REMAP_BYTES`` read through one env it is closed and reopened
    on the next read (~0.1 ms). One fault can map far more than was read (the
    kernel maps whole page-cache folios: ~20x the bytes read on this machine's
    Linux 6.18 / ext4), hence the small ``REMAP_BYTES`` (1 MB: ~40 MB mapped
    per process at most, whatever the cache size). The pages stay in the OS
    page cache, so nothing is read from disk again.

    A value larger than ``schema.MAX_RECORD_BYTES`` or an LMDB error while
    reading it raises CorruptRecordError naming the key (before copying).
    """
    with _READ_LOCK:
        entry = _read_entry(path)
        try:
            with entry[1].begin(buffers=True) as txn:
                view = txn.get(key)
                if view is not None and len(view) > MAX_RECORD_BYTES:
                    raise CorruptRecordError(key.decode(), f"{len(view)} bytes, more than the record limit of {MAX_RECORD_BYTES}")
                raw = None if view is None else bytes(view)
        except lmdb.Error as exc:  # a damaged leaf / overflow page the structural check cannot see
            raise CorruptRecordError(key.decode(), f"lmdb: {exc}") from None
        if raw is not None:
            entry[2] += len(raw)
            if entry[2] >= REMAP_BYTES:
                _close_quietly(entry[1])
                del _READ_ENVS[path]
        return raw


class CacheReader:
    """Random access to one cache or to a list of shard caches (or shard-set directories) read as one dataset.

    Global index ``i`` runs over the caches in the order given. Nothing is
    opened until the first record is read, so a reader can be created in a
    parent process and used in forked workers.
    """

    def __init__(self, paths):
        self.paths = shard_set.expand(paths)  # a shard-set directory stands for its shard caches
        if not self.paths:
            raise UserError("no cache given")
        self.manifests = [read_manifest(p) for p in self.paths]  # first: a symlink loop or a non-cache fails here
        self._resolved = [os.path.realpath(p) for p in self.paths]
        for path in self._resolved:
            check_lmdb_file(path)  # a damaged data.mdb is a one-line error now, not a crash at the first read
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
        raw = read_value(self._resolved[shard], key.encode())
        if raw is None:
            raise CorruptRecordError(key, f"missing from {self.paths[shard]} (truncated cache?)")
        return raw

    def get(self, index, with_image=True):
        """Decoded sample (CONTRACTS.md) with ``index`` set, its checksum verified first.

        Always verified (blake2b: ~1 ms per MB): ``show``, ``export`` and
        ``ddtrain eval`` read through here, and export copies the image bytes
        without decoding them, so a flipped byte would otherwise pass unseen.
        """
        raw = self.get_raw(index)
        shard, key = self.locate(index)
        expected = self.manifests[shard]["checksums"][index - int(self.offsets[shard])]
        if checksum(raw) != expected:
            raise CorruptRecordError(key, f"checksum mismatch in {self.paths[shard]}")
        sample = decode_record(key, raw, with_image=with_image)
        sample["index"] = int(index)
        return sample
