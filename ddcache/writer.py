"""Cache writer: the one place that writes the cache format (records, checksums, index, skips, manifest).

Life of a cache (``CacheWriter``)::

    writer = CacheWriter.open(out, header)          # a new OUT.partial/, or the unfinished one resumed
    writer.append(record_bytes, (rows, cols, cells)) # the next record, key 00000000, 00000001, ...
    writer.skip(Skip(reason, file, line_no, detail)) # an input line that became no record
    writer.commit(state)                             # durable: everything since the last commit, atomically
    ...
    writer.finish(counts)                            # skipped.jsonl, manifest.json, then OUT.partial -> OUT

Crash safety: each :meth:`commit` is one LMDB transaction holding the new
records, their checksums and index entries, the new skip entries and the
caller's ``state`` (what the caller needs to continue, e.g. how many input
tasks are accounted for). A SIGKILL at any moment leaves the state of the
last commit; :meth:`open` on the same ``out`` resumes from it (the caller
continues after ``writer.state``). Bookkeeping lives in LMDB under keys
starting with ``__`` (``__header``, ``__state``, ``__sum/KEY``,
``__skip/N``) while the cache is written. :meth:`finish` writes
``skipped.jsonl`` and ``manifest.json`` from it, then deletes every
bookkeeping key (so a finished ``data.mdb`` holds records under
``00000000``, ``00000001``, ... and nothing else) and renames the directory
into place. A crash inside :meth:`finish` is finished by the next
:meth:`open` + :meth:`finish`: a partial directory with a manifest is a
complete cache that was not yet renamed.

Who may write and what may be replaced (``ddcache.cache_dir``): one writer
per ``out`` (a lock held from :meth:`open` to :meth:`close`), ``overwrite``
replaces only a directory of cache files, and publishing over an old cache
swaps the two directories atomically (no ``OUT.old`` at any moment).
"""
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import categories as C
from .cache_dir import BuildLock, partial_dir, prepare, publish
from .codec import checksum
from .errors import UserError
from .manifest import (MANIFEST_NAME, SKIP_REPORT_NAME, append_record, new_manifest, read_manifest, record_key,
                       write_manifest)
from .store import LmdbWriter

_HEADER, _STATE, _SUMS, _SKIPS = "header", "state", "sum/", "skip/"
DEFAULT_MAP_SIZE = 1 << 30  # grows by doubling when full


@dataclass(frozen=True)
class CacheHeader:
    """What a cache is: compared on resume (another header = another cache) and copied into the manifest.

    ``build_options``: the JSON-able options that decide the records (the
    manifest's ``build_options``); ``shard``: ``(i, n)`` or None.
    """

    dataset: str
    split: str
    mode: str
    build_options: dict
    shard: tuple = None

    def as_dict(self):
        d = asdict(self)
        d["shard"] = list(self.shard) if self.shard else None
        return json.loads(json.dumps(d))  # tuples -> lists: the form it has after a round trip through storage


@dataclass(frozen=True)
class Skip:
    """One input line that became no record: a stable ``reason`` tag, where it is, and a short ``detail``."""

    reason: str
    file: str
    line_no: int
    detail: str = ""


class CacheWriter:
    """Writes one cache directory; see the module docstring. Create with :meth:`open`."""

    def __init__(self, out, header, lmdb_writer, state):
        self.out = Path(out)
        self.partial = partial_dir(self.out)
        self.header = header
        self._lock = None  # the BuildLock held from open() to close()
        self._lmdb = lmdb_writer
        saved = state or {}
        self.resumed = lmdb_writer is None or state is not None  # an earlier run committed (or finished) here
        self.state = saved.get("caller")  # the caller's state of the last commit (None: nothing committed yet)
        counts = saved.get("writer", {"records": 0, "bytes": 0, "skips": 0, "skipped": {}})
        self.num_records, self.num_bytes = counts["records"], counts["bytes"]
        self.num_skips, self.skipped = counts["skips"], dict(counts["skipped"])
        self.complete = lmdb_writer is None  # manifest written by an earlier run; only publishing remains
        self._manifest = None
        self._records, self._meta = [], {}
        self.uncommitted = 0  # records and skips added since the last commit

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, out, header, overwrite=False, map_size=DEFAULT_MAP_SIZE):
        """Start writing the cache ``out`` (in ``out.partial/``), or resume the unfinished one there.

        UserError (one line) if another writer holds ``out`` (its lock), if
        ``out`` exists and ``overwrite`` is False or it is not a cache, if its
        parent cannot be created, or if ``out.partial`` is an unfinished cache
        with another header (with ``overwrite`` it is discarded instead) or
        holds files that are not a cache's.
        """
        out = Path(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create {out.parent}: {exc.strerror}") from None
        lock = BuildLock(out).__enter__()
        try:
            prepare(out, overwrite)
            writer = cls._open_locked(out, header, overwrite, map_size)
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        writer._lock = lock
        return writer

    @classmethod
    def _open_locked(cls, out, header, overwrite, map_size):
        partial = partial_dir(out)
        wanted = header.as_dict()
        if (partial / MANIFEST_NAME).is_file():  # an earlier finish() stopped before the rename
            manifest = read_manifest(partial)
            saved = {k: manifest.get(k) for k in wanted}
            if _same_or_discarded(partial, saved, wanted, overwrite):
                writer = cls(out, header, None, None)
                writer._manifest = manifest
                return writer
        lmdb_writer = LmdbWriter(partial, map_size=map_size)
        saved = lmdb_writer.get_meta(_HEADER)
        if saved is None and lmdb_writer.env.stat()["entries"]:  # written by an older ddcache: not resumable here
            lmdb_writer.close()
            if not overwrite:
                raise UserError(f"{partial} is an unfinished build of another ddcache version; "
                                "delete it (or use --overwrite) and re-run")
            shutil.rmtree(partial)
            lmdb_writer = LmdbWriter(partial, map_size=map_size)
        if saved is not None and not _same_or_discarded(partial, saved, wanted, overwrite, lmdb_writer):
            lmdb_writer = LmdbWriter(partial, map_size=map_size)
            saved = None
        if saved is None:
            lmdb_writer.commit([], {_HEADER: wanted})
            return cls(out, header, lmdb_writer, None)
        return cls(out, header, lmdb_writer, lmdb_writer.get_meta(_STATE))

    # ------------------------------------------------------------ writing

    def append(self, record, index):
        """Add the next record (msgpack bytes, ``codec.encode_record``) with its index entry
        ``(num_rows, num_cols, num_cells)``; returns its key. Durable at the next :meth:`commit`."""
        key = record_key(self.num_records)
        self._records.append((key, record))
        self._meta[_SUMS + key] = [checksum(record), *(int(v) for v in index)]
        self.num_records += 1
        self.num_bytes += len(record)
        self.uncommitted += 1
        return key

    def skip(self, skip):
        """Record that an input line became no record (a :class:`Skip`); durable at the next :meth:`commit`."""
        self._meta[f"{_SKIPS}{self.num_skips:010d}"] = asdict(skip)
        self.num_skips += 1
        self.skipped[skip.reason] = self.skipped.get(skip.reason, 0) + 1
        self.uncommitted += 1

    def commit(self, state=None):
        """Make everything added since the last commit durable, together with the caller's ``state`` (JSON-able).

        One LMDB transaction: after a crash either all of it is there or none.
        """
        counts = {"records": self.num_records, "bytes": self.num_bytes, "skips": self.num_skips,
                  "skipped": self.skipped}
        self._lmdb.commit(self._records, {**self._meta, _STATE: {"writer": counts, "caller": state}})
        self._records, self._meta = [], {}
        self.uncommitted = 0
        self.state = state

    # ------------------------------------------------------------ finishing

    def finish(self, counts=None, **fields):
        """Commit, write ``skipped.jsonl`` and ``manifest.json``, drop the bookkeeping, publish ``out``.

        ``counts``: the caller's counts for the manifest (e.g. ``num_read``,
        ``num_tables_written``, ``boxes_per_category``, ``dropped_boxes``); the
        writer adds ``num_samples``, ``bytes``, ``num_skipped`` and ``skipped``.
        ``fields``: further top-level manifest entries (e.g. ``encoding``,
        ``source``). Returns the manifest. After a resumed :meth:`finish` that
        had already written the manifest, that manifest is published as it is.
        """
        if not self.complete:
            if self.uncommitted:
                self.commit(self.state)
            manifest = self._manifest_from_bookkeeping(counts or {}, fields)
            self._write_skip_report()
            write_manifest(self.partial, manifest)
            self._manifest = manifest
        self._drop_bookkeeping()
        self._publish()
        return self._manifest

    def close(self):
        """Release the LMDB environment and the lock without publishing (a later :meth:`open` resumes from the
        last commit)."""
        if self._lmdb is not None:
            self._lmdb.close()
            self._lmdb = None
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _manifest_from_bookkeeping(self, counts, fields):
        h = self.header
        manifest = new_manifest(h.dataset, h.split, h.mode, C.IDS, h.build_options, h.shard)
        for _, (digest, rows, cols, cells) in self._lmdb.iter_meta(_SUMS):
            append_record(manifest, digest, rows, cols, cells)
        if len(manifest["checksums"]) != self.num_records:
            raise RuntimeError(f"internal: {len(manifest['checksums'])} checksums for {self.num_records} records")
        manifest["counts"] = {
            **counts,
            "num_samples": self.num_records,
            "bytes": self.num_bytes,
            "num_skipped": self.num_skips,
            "skipped": dict(sorted(self.skipped.items())),
        }
        manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest.update(fields)
        return manifest

    def _write_skip_report(self):
        path = self.partial / SKIP_REPORT_NAME
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for _, skip in self._lmdb.iter_meta(_SKIPS):
                f.write(json.dumps(skip, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _drop_bookkeeping(self):
        lmdb_writer = self._lmdb or LmdbWriter(self.partial)
        lmdb_writer.delete_meta("")
        lmdb_writer.close()
        self._lmdb = None

    def _publish(self):
        publish(self.partial, self.out)


def _same_or_discarded(partial, saved, wanted, overwrite, lmdb_writer=None):
    """True if the unfinished cache in ``partial`` has header ``wanted``; else discard it (``overwrite``) and
    return False, or raise UserError naming the fields that differ."""
    if saved == wanted:
        return True
    if not overwrite:
        saved_options = saved.get("build_options") or {}
        changed = {k for k in wanted if k != "build_options" and saved.get(k) != wanted[k]}
        changed |= {k for k in set(wanted["build_options"]) | set(saved_options)
                    if saved_options.get(k) != wanted["build_options"].get(k)}
        changed = sorted(changed)
        raise UserError(f"{partial} is an unfinished build with other options ({', '.join(changed)}); "
                        "re-run with the same options to resume, or delete it")
    if lmdb_writer is not None:
        lmdb_writer.close()
    shutil.rmtree(partial)  # --overwrite: an unfinished build with other options is discarded
    return False
