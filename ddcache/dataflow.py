"""Streaming a cache into training: tensorpack DataFlows over one cache or a list of shard caches.

Nothing is loaded up front: a DataFlow holds the manifests (a few bytes per
record) and reads one record at a time by key from LMDB. LMDB is opened per
process in ``reset_state()`` (``store.open_readonly``: readonly, lock=False,
no readahead); an env inherited through fork is dropped, never used.

Pieces (compose them like any tensorpack DataFlow):

* :class:`CacheDataFlow` -- every selected sample once per ``__iter__``, in
  this process (in key order, or shuffled per epoch).
* :class:`ShardedCacheDataFlow` -- this (rank, worker)'s part of each epoch
  (``ddcache.partition``). Inside tensorpack's ``MultiProcessRunnerZMQ`` each
  forked copy claims its worker id in ``reset_state()`` from a
  ``multiprocessing.Value`` counter created before the fork.
* :class:`EpochRunner` -- our own multi-process runner: forks
  ``num_workers`` readers with explicit worker ids; each ``__iter__`` yields
  exactly one epoch across them (workers report the end of their part;
  the runner waits for all of them), errors name the key, a dead worker
  raises instead of hanging.
* :func:`streaming_dataflow` -- the composed source used for training.
* :class:`LosslessMapDataZMQ` -- tensorpack's ``MultiProcessMapDataZMQ``
  whose workers never drop a reply (see its docstring); use it for every
  multi-process map.
* :func:`parallel_decode` -- decode raw items (``decode=False``) in
  ``LosslessMapDataZMQ`` workers; a corrupt record raises in the
  consumer naming its key instead of killing a worker (which would hang
  tensorpack's pipeline).

Read-time selection uses the manifest only (no decode, no rebuild):
``min_rows/max_rows/min_cols/max_cols/min_cells/max_cells`` select records
by their index columns; ``categories=["CELL"]`` (or ``["ROW", "COLUMN"]``)
keeps only those boxes of each sample (samples left with no box are kept).

Epochs: every ``__iter__`` of :class:`CacheDataFlow` / :class:`EpochRunner`
(and so of :func:`streaming_dataflow`) is the next epoch, starting at
``start_epoch``; the order of epoch ``e`` is a function of ``(seed, e)``
only, so all ranks and workers agree without talking to each other.
:meth:`~CacheDataFlow.set_epoch` sets the next epoch (e.g. on resume).
"""
import ctypes
import mmap
import multiprocessing as mp
import os
import signal
import traceback
from multiprocessing.connection import wait as wait_ready

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tensorpack imports TensorFlow (FACTS.md §5)

import numpy as np  # noqa: E402
from tensorpack.dataflow import DataFlow, MultiProcessMapDataZMQ  # noqa: E402

from . import categories as C  # noqa: E402
from .codec import checksum, decode_record  # noqa: E402
from .errors import CorruptRecordError, UserError, WorkerDiedError  # noqa: E402
from .partition import check_slot, epoch_permutation, partition, rank_size  # noqa: E402
from .store import CacheReader, open_readonly  # noqa: E402

FILTERS = ("min_rows", "max_rows", "min_cols", "max_cols", "min_cells", "max_cells")
_FILTER_COLUMNS = {"rows": "num_rows", "cols": "num_cols", "cells": "num_cells"}
_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------- selection and decoding


def select_indices(reader, **filters):
    """Sorted int64 global indices of ``reader`` (a ``CacheReader``) passing the builder's filters.

    ``filters``: any of ``min_rows, max_rows, min_cols, max_cols, min_cells,
    max_cells`` (inclusive bounds, None = no bound), checked against the
    manifest index, so nothing is decoded.
    """
    unknown = set(filters) - set(FILTERS)
    if unknown:
        raise TypeError(f"unknown filter(s): {', '.join(sorted(unknown))}")
    keep = np.ones(len(reader), dtype=bool)
    for name, bound in filters.items():
        if bound is None:
            continue
        values = reader.index_column(_FILTER_COLUMNS[name.split("_", 1)[1]])
        keep &= values >= bound if name.startswith("min_") else values <= bound
    return np.flatnonzero(keep).astype(np.int64)


class SampleDecoder:
    """Raw item -> decoded sample (CONTRACTS.md dict + ``index``, ``epoch``); picklable, for worker processes.

    ``categories``: ddcache category ids to keep (None = all). Attributes
    follow the kept boxes. ``with_attributes`` / ``with_provenance`` False
    drop those entries (less to pickle between processes).
    Raises ``CorruptRecordError`` naming the key if the record does not decode.
    """

    def __init__(self, categories=None, with_attributes=True, with_provenance=True):
        self.categories = None if categories is None else sorted(int(c) for c in categories)
        self.with_attributes = bool(with_attributes)
        self.with_provenance = bool(with_provenance)

    def options(self):
        return (self.categories, self.with_attributes, self.with_provenance)

    def __call__(self, item):
        sample = decode_record(item["key"], item["raw"], with_image=True)
        sample["index"] = item["index"]
        sample["epoch"] = item.get("epoch", 0)
        return self.finish(sample)

    def finish(self, sample):
        """Apply category selection and the with_* options to a decoded sample (in place; returns it)."""
        if self.categories is not None:
            keep = np.isin(sample["category_ids"], self.categories)
            sample["boxes"] = sample["boxes"][keep]
            sample["category_ids"] = sample["category_ids"][keep]
            sample["attributes"] = {k: v[keep] for k, v in sample["attributes"].items()}
        if not self.with_attributes:
            sample.pop("attributes", None)
        if not self.with_provenance:
            sample.pop("provenance", None)
        return sample


def decode_sample(item):
    """Decode a raw item yielded with ``decode=False`` (``{"key", "index", "epoch", "raw", "decode"}``).

    The item carries its dataflow's decode options, so this plain function can
    be a map function. Returns the sample dict (CONTRACTS.md); raises
    ``CorruptRecordError`` naming the key. An exception kills a tensorpack map
    worker and hangs its consumer: in workers use :func:`decode_or_report`
    (as :func:`parallel_decode` and the training mapper do).
    """
    return SampleDecoder(*item["decode"])(item)


def decode_or_report(item):
    """:func:`decode_sample` for map workers: a corrupt record becomes ``{"__corrupt__": (key, reason)}``.

    Map workers must not raise (tensorpack's consumer would wait forever for
    the dead worker's reply): the error travels as a value the consumer
    re-raises (:func:`raise_if_reported`).
    """
    try:
        return decode_sample(item)
    except CorruptRecordError as exc:
        return {"__corrupt__": (exc.key, exc.reason)}


def raise_if_reported(value):
    """Consumer side of :func:`decode_or_report`: raise the reported ``CorruptRecordError``; else return ``value``."""
    if isinstance(value, dict) and "__corrupt__" in value:
        raise CorruptRecordError(*value["__corrupt__"])
    return value


class _RaiseOrCount:
    """Consumer side of :func:`parallel_decode`: raise (or count and drop) reported corrupt records."""

    def __init__(self, skip_corrupt):
        self.skip_corrupt = skip_corrupt
        self.corrupt = []

    def __call__(self, sample):
        bad = sample.get("__corrupt__")
        if bad is not None and self.skip_corrupt:
            self.corrupt.append(bad[0])
            return None
        return raise_if_reported(sample)


class LosslessMapDataZMQ(MultiProcessMapDataZMQ):
    """``MultiProcessMapDataZMQ`` whose workers never silently drop a result.

    tensorpack gives each REP worker socket a high-water mark of
    ``2 * buffer_size / num_proc`` messages. A REP socket whose outgoing pipe
    is at its mark drops the reply without an error (libzmq issue #4750), and
    the pipe counts lag by up to half the mark; with MB-sized table crops that
    happened here in about one run in three, after which the consumer waited
    forever for the missing reply. Requests in flight are already bounded by
    ``buffer_size`` on the consumer's side, so workers get no mark at all
    (0 = unlimited): no reply is ever dropped and memory stays bounded.

    Workers also die with the process that starts them (``PR_SET_PDEATHSIG``,
    set before they wait for their first request): tensorpack relies on
    python-prctl for that, which is not a dependency here.
    """

    def _create_worker(self, id, pipename, hwm):
        worker = super()._create_worker(id, pipename, 0)
        parent, run = os.getpid(), worker.run

        def run_dying_with_parent():
            die_with_parent(parent)
            run()

        worker.run = run_dying_with_parent  # called by Process._bootstrap in the forked worker
        return worker


def parallel_decode(df, num_proc, buffer_size=None, skip_corrupt=False, strict=True):
    """``df`` of raw items (``decode=False``) -> decoded samples, decoding in ``num_proc`` processes.

    ``LosslessMapDataZMQ(decode)`` + a ``MapData`` that re-raises a
    corrupt record in the consumer (``CorruptRecordError`` naming the key)
    or, with ``skip_corrupt``, drops it and lists its key in ``.corrupt`` of
    the returned DataFlow's ``counter`` attribute. ``strict=True`` keeps
    tensorpack's strict mode: each ``__iter__`` maps exactly one pass of
    ``df`` (one epoch of a streaming source). ``buffer_size`` defaults to 2 per
    process (at least 4): decoded table crops are MBs each.
    """
    from tensorpack.dataflow import MapData

    if buffer_size is None:
        buffer_size = max(4, 2 * num_proc)
    mapped = LosslessMapDataZMQ(df, num_proc=num_proc, map_func=decode_or_report, buffer_size=buffer_size,
                                    strict=strict)
    counter = _RaiseOrCount(skip_corrupt)
    out = MapData(mapped, counter)
    out.counter = counter
    return out


# ---------------------------------------------------------------- in-process dataflows


class CacheDataFlow(DataFlow):
    """All selected samples of one cache or a list of shard caches (read as one dataset), in this process.

    Args:
      paths: a cache directory or a list of them (global index runs over them in order).
      decode: True yields decoded samples (CONTRACTS.md dict plus ``index``,
        the global index, and ``epoch``); False yields raw items
        ``{"key", "index", "epoch", "raw", "decode"}`` for :func:`decode_sample`.
      categories: category names (e.g. ``["CELL"]``) whose boxes are kept; None = all.
      with_attributes, with_provenance: keep those entries of the sample.
      shuffle, seed: per-epoch permutation of the selection (``partition.epoch_permutation``).
      check: verify each record's checksum against the manifest before use
        (blake2b, ~0.1 ms per 100 KB record; catches flipped bytes that still decode).
      skip_corrupt: skip a corrupt record and append its key to ``self.corrupt``
        instead of raising ``CorruptRecordError``.
      start_epoch: the epoch of the first ``__iter__``.
      min_rows .. max_cells: the builder's filters, applied via the manifest index.

    Raises UserError for a missing cache or an unknown category name.
    """

    def __init__(self, paths, decode=True, categories=None, with_attributes=True, with_provenance=True, shuffle=False,
                 seed=0, check=True, skip_corrupt=False, start_epoch=0, **filters):
        self.reader = CacheReader(paths)
        self.selection = select_indices(self.reader, **filters)
        try:
            ids = None if categories is None else C.ids_for(categories)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.decoder = SampleDecoder(ids, with_attributes, with_provenance)
        self.decode = bool(decode)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.check = bool(check)
        self.skip_corrupt = bool(skip_corrupt)
        self.epoch = int(start_epoch)
        self.corrupt = []  # keys skipped because they were corrupt (skip_corrupt=True)

    def __len__(self):
        return len(self.selection)

    def set_epoch(self, epoch):
        """Make the next ``__iter__`` read epoch ``epoch``."""
        self.epoch = int(epoch)

    def reset_state(self):
        """Open this process's LMDB environments (an env inherited through fork is replaced)."""
        for path in self.reader.paths:
            open_readonly(path)

    def epoch_order(self, epoch):
        """The selection in epoch ``epoch``'s order (int64 global indices), identical in every process."""
        if not self.shuffle:
            return self.selection
        return self.selection[epoch_permutation(len(self.selection), self.seed, epoch)]

    def epoch_indices(self, epoch):
        """Global indices this dataflow reads in epoch ``epoch``, in reading order."""
        return self.epoch_order(epoch)

    def read(self, index, epoch=0):
        """The item for global index ``index`` (random access by key); raises CorruptRecordError naming the key."""
        index = int(index)
        shard, key = self.reader.locate(index)
        raw = self.reader.get_raw(index)
        if self.check:
            expected = self.reader.manifests[shard]["checksums"][index - int(self.reader.offsets[shard])]
            if checksum(raw) != expected:
                raise CorruptRecordError(key, f"checksum mismatch in {self.reader.paths[shard]} (global index {index})")
        item = {"key": key, "index": index, "epoch": int(epoch), "raw": raw, "decode": self.decoder.options()}
        return self.decoder(item) if self.decode else item

    def iter_epoch(self, epoch):
        """Yield this dataflow's items of epoch ``epoch`` (does not change ``self.epoch``)."""
        for index in self.epoch_indices(epoch):
            try:
                item = self.read(index, epoch)
            except CorruptRecordError as exc:
                if not self.skip_corrupt:
                    raise
                self.corrupt.append(exc.key)
                continue
            yield item

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        yield from self.iter_epoch(epoch)


def die_with_parent(parent_pid):
    """Ask Linux to SIGKILL this process when its parent dies (tensorpack wants python-prctl for this)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


class ShardedCacheDataFlow(CacheDataFlow):
    """This process's part of each epoch: rank ``rank`` of ``world``, worker ``worker`` of ``num_workers``.

    Parts are ``partition.partition(epoch_order(e), rank, world, worker,
    num_workers)``: over all ranks and workers every selected sample is read
    exactly once per epoch.

    Worker id: given explicitly (``worker=``, or by :class:`EpochRunner`),
    or, when ``worker`` is None, claimed in ``reset_state()`` of a *forked*
    process from a shared counter created here, before any fork -- this is
    how copies forked by tensorpack's ``MultiProcessRunnerZMQ(df,
    num_proc=num_workers)`` learn ids 0..num_workers-1. Claiming more ids
    than ``num_workers`` raises RuntimeError (samples would repeat). In the
    creating process with ``worker`` None the dataflow reads the rank's whole
    share (all its workers' parts).

    ``len()`` is the rank's samples per epoch (what ``MultiProcessRunnerZMQ``
    should deliver per ``__iter__``); a worker's own ``__iter__`` yields only
    its part. Under ``MultiProcessRunnerZMQ`` each worker advances its own
    epochs, so over the stream every epoch is exactly covered, but one pass of
    the runner may end a few samples into the next epoch (ZMQ interleaves
    workers); :class:`EpochRunner` cuts epochs exactly.
    """

    def __init__(self, paths, rank=0, world=1, num_workers=1, worker=None, **kwargs):
        super().__init__(paths, **kwargs)
        check_slot(rank, world, 0 if worker is None else worker, num_workers)
        self.rank, self.world, self.num_workers = int(rank), int(world), int(num_workers)
        self.worker = None if worker is None else int(worker)
        self._owner_pid = os.getpid()
        self._claims = mp.get_context("fork").Value("i", 0) if num_workers > 1 else None

    def __len__(self):
        return rank_size(len(self.selection), self.rank, self.world, self.num_workers)

    def assign_worker(self, worker):
        """Set this copy's worker id (used by runners that know it, before ``reset_state``)."""
        check_slot(self.rank, self.world, worker, self.num_workers)
        self.worker = int(worker)

    def reset_state(self):
        if os.getpid() != self._owner_pid:
            die_with_parent(os.getppid())
            if self.worker is None:
                self.assign_worker(self._claim())
        super().reset_state()

    def _claim(self):
        if self._claims is None:
            return 0
        with self._claims.get_lock():
            worker = self._claims.value
            self._claims.value += 1
        if worker >= self.num_workers:
            raise RuntimeError(
                f"ShardedCacheDataFlow(num_workers={self.num_workers}) was forked into more worker processes than that "
                "(every sample would be read more than once per epoch); pass num_workers equal to the process count")
        return worker

    def epoch_indices(self, epoch):
        order = self.epoch_order(epoch)
        if self.worker is not None:
            return partition(order, self.rank, self.world, self.worker, self.num_workers)
        # The whole rank share, in epoch order: positions whose slot belongs to this rank.
        stride = self.world * self.num_workers
        slots = np.arange(len(order)) % stride // self.num_workers
        return order[slots == self.rank]


# ---------------------------------------------------------------- multi-process runner


class _ImageSlots:
    """The image transport of one worker: a ring of ``num_slots`` image slots in shared memory.

    Pickling a 5 MB table crop through a pipe costs more than decoding it
    (measured ~28 ms vs ~10 ms here), so decoded images travel through
    memory shared by fork and only their slot and shape through the pipe.
    The memory is an anonymous shared mapping made by the parent before the
    fork: nothing has a name, nothing can leak when a process is killed, and
    untouched pages cost no RAM. ``free`` (a semaphore) counts slots the
    parent has copied out; the worker reuses a slot only after that. An
    image larger than a slot goes through the pipe instead.
    """

    def __init__(self, num_slots, slot_bytes, ctx):
        self.num_slots, self.slot_bytes = int(num_slots), int(slot_bytes)
        self.memory = mmap.mmap(-1, self.num_slots * self.slot_bytes)  # MAP_SHARED | MAP_ANONYMOUS
        self.free = ctx.Semaphore(self.num_slots)
        self.next_put = 0

    def view(self, k, shape):
        return np.ndarray(shape, np.uint8, self.memory, offset=k * self.slot_bytes)

    def put(self, image):
        """Worker: copy ``image`` (uint8) into the next slot; return ``(slot, shape)``, or None if it does not fit."""
        if image.nbytes > self.slot_bytes:
            return None
        self.free.acquire()
        k = self.next_put
        self.next_put = (k + 1) % self.num_slots
        self.view(k, image.shape)[...] = image
        return k, tuple(image.shape)

    def take(self, slot):
        """Parent: a copy of the image in ``slot`` (``(k, shape)`` from :meth:`put`); frees the slot."""
        k, shape = slot
        image = self.view(k, shape).copy()
        self.free.release()
        return image


def _worker_main(ds, worker, conn, parent_pid, slots):
    """Body of one reader process: wait for ``("epoch", e)``, send its items, then ``("end", e, corrupt keys)``."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then stops us
    ds.assign_worker(worker)
    try:
        ds.reset_state()
    except Exception as exc:
        conn.send(("error", -1, ("other", type(exc).__name__, str(exc), traceback.format_exc())))
        return
    _serve(ds, conn, slots)


def _serve(ds, conn, slots):
    pending = None
    while True:
        try:
            cmd, pending = (pending, None) if pending is not None else (conn.recv(), None)
        except (EOFError, OSError):
            return
        if cmd[0] == "stop":
            return
        if cmd[0] == "abort":  # the epoch it meant already ended here (our "end" crossed it in the pipe)
            continue
        epoch = cmd[1]
        del ds.corrupt[:]
        try:
            for item in ds.iter_epoch(epoch):
                image = item.get("image") if ds.decode else None
                slot = slots.put(image) if isinstance(image, np.ndarray) and image.dtype == np.uint8 else None
                if slot is not None:
                    item["image"] = None
                    item["__slot__"] = slot
                conn.send(("item", epoch, item))
                if conn.poll():  # "abort", "stop", or the next epoch of a consumer that abandoned this one
                    interrupt = conn.recv()
                    if interrupt[0] == "stop":
                        return
                    if interrupt[0] == "epoch":
                        pending = interrupt
                    break
            conn.send(("end", epoch, list(ds.corrupt)))
        except CorruptRecordError as exc:
            conn.send(("error", epoch, ("corrupt", exc.key, exc.reason, "")))
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:
            conn.send(("error", epoch, ("other", type(exc).__name__, str(exc), traceback.format_exc())))


class EpochRunner(DataFlow):
    """Run a :class:`ShardedCacheDataFlow` in ``ds.num_workers`` forked reader processes; one epoch per ``__iter__``.

    Worker ``w`` gets its id explicitly (no guessing from process names).
    ``__iter__`` sends ``("epoch", e)`` to every worker and yields items as
    they arrive until every worker has reported the end of its part, so the
    items of one ``__iter__`` are exactly the rank's share of epoch ``e``
    (order interleaved across workers). Leaving an iteration early aborts the
    epoch in the workers. Errors: a corrupt record raises
    ``CorruptRecordError`` naming the key (``skip_corrupt`` datasets skip it;
    skipped keys accumulate in ``self.corrupt``); another exception in a worker
    raises RuntimeError with its traceback; a worker that dies (signal, OOM
    kill) raises :class:`WorkerDiedError` -- never a hang. Workers die with
    the parent (PR_SET_PDEATHSIG) and are stopped by :meth:`close`.

    Transport: one pipe per worker for items; decoded images go through a
    ring of ``num_slots`` slots of ``slot_mb`` MB of fork-shared memory per
    worker (:class:`_ImageSlots`; copied out on receipt, larger images use
    the pipe). A worker runs at most ``num_slots`` images ahead, so memory
    stays bounded.
    """

    def __init__(self, ds, poll_seconds=1.0, num_slots=2, slot_mb=8):
        if not isinstance(ds, ShardedCacheDataFlow):
            raise TypeError("EpochRunner needs a ShardedCacheDataFlow (it assigns worker ids)")
        self.ds = ds
        self.num_workers = ds.num_workers
        self.poll_seconds = poll_seconds
        self.epoch = ds.epoch
        self.corrupt = []
        self._procs, self._conns = [], []
        self._broken = None
        self._open = None  # (workers still in the epoch, epoch) of the iterator in progress
        self.num_slots = int(num_slots)
        self.slot_bytes = int(slot_mb * (1 << 20))
        self._slots = []  # per worker: its _ImageSlots

    def __len__(self):
        return len(self.ds)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def reset_state(self):
        """Fork the reader processes (the LMDB envs are opened in each of them, after the fork)."""
        if self._procs:
            raise RuntimeError("EpochRunner.reset_state() called twice")
        ctx = mp.get_context("fork")
        parent = os.getpid()
        for w in range(self.num_workers):
            ours, theirs = ctx.Pipe(duplex=True)
            slots = _ImageSlots(self.num_slots, self.slot_bytes, ctx)
            self._slots.append(slots)
            proc = ctx.Process(target=_worker_main, args=(self.ds, w, theirs, parent, slots), daemon=True,
                               name=f"ddcache-reader-{w}")
            proc.start()
            theirs.close()
            self._procs.append(proc)
            self._conns.append(ours)

    @property
    def pids(self):
        return [p.pid for p in self._procs]

    def __iter__(self):
        if not self._procs:
            raise RuntimeError("call reset_state() before iterating an EpochRunner")
        if self._broken:
            raise RuntimeError(f"EpochRunner is unusable after an earlier failure: {self._broken}")
        if self._open is not None:  # an earlier iterator was left unfinished and is still referenced
            self._abort(*self._open)
        epoch = self.epoch
        self.epoch += 1
        active = set(range(self.num_workers))
        self._open = (active, epoch)
        for conn in self._conns:
            conn.send(("epoch", epoch))
        try:
            while active:
                for w, msg in self._receive(active):
                    kind = msg[0]
                    if msg[1] != epoch and not (kind == "error" and msg[1] == -1):
                        continue  # a stale message from an aborted epoch
                    if kind == "item":
                        yield msg[2]
                    elif kind == "end":
                        active.discard(w)
                        self.corrupt.extend(msg[2])
                    else:
                        active.discard(w)
                        self._raise_worker_error(w, msg[2])
        finally:
            if self._open is not None and self._open[1] == epoch:
                self._open = None
                if active:
                    self._abort(active, epoch)

    def _receive(self, active):
        """Block until an active worker has messages; return ``[(worker, message)]``. Raises if a worker died."""
        conns = {self._conns[w]: w for w in active}
        sentinels = {self._procs[w].sentinel: w for w in active}
        while True:
            ready = wait_ready(list(conns) + list(sentinels), timeout=self.poll_seconds)
            if not ready:
                continue
            out = []
            for obj in ready:
                if obj in conns:
                    w = conns[obj]
                    try:
                        msg = obj.recv()
                    except (EOFError, OSError):
                        self._worker_died(w)
                    if msg[0] == "item" and "__slot__" in msg[2]:
                        msg[2]["image"] = self._slots[w].take(msg[2].pop("__slot__"))
                    out.append((w, msg))
                elif not self._conns[sentinels[obj]].poll():
                    # Exited with nothing left to read (if data remains, the next wait reads it first).
                    self._worker_died(sentinels[obj])
            if out:
                return out
            # data remains on a dead worker's pipe: loop and read it

    def _worker_died(self, w):
        self._procs[w].join(1)
        self._broken = f"reader worker {w} died (exit code {self._procs[w].exitcode})"
        raise WorkerDiedError(f"{self._broken} while streaming {self.ds.reader.paths[0]}")

    def _raise_worker_error(self, w, info):
        if info[0] == "corrupt":
            _, key, reason, _ = info
            raise CorruptRecordError(key, f"{reason} (reader worker {w})")
        _, name, message, tb = info
        raise RuntimeError(f"reader worker {w} failed: {name}: {message}\n{tb}")

    def _abort(self, active, epoch):
        """Stop ``epoch`` in the still-active workers and read their pipes empty (so the next epoch starts clean)."""
        for w in active:
            try:
                self._conns[w].send(("abort", epoch))
            except OSError:
                pass
        try:
            while active:
                for w, msg in self._receive(active):
                    if msg[1] == epoch and msg[0] in ("end", "error"):
                        active.discard(w)
        except WorkerDiedError:
            pass

    def close(self):
        """Stop and join the worker processes (idempotent)."""
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for proc in self._procs:
            proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns, self._slots = [], [], []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def streaming_dataflow(paths, rank=0, world=1, num_workers=0, seed=0, shuffle=True, decode=True, start_epoch=0,
                       **kwargs):
    """The training source: this rank's share of every epoch, read by ``num_workers`` processes.

    ``num_workers=0`` reads in the calling process (a
    :class:`ShardedCacheDataFlow` of one worker); ``num_workers >= 1`` forks
    that many readers (:class:`EpochRunner`; decoding happens in them unless
    ``decode=False``). Either way each ``__iter__`` yields exactly this rank's
    share of the next epoch (epochs ``start_epoch``, ``start_epoch + 1``, ...;
    wrap in ``RepeatedData(df, -1)`` for an endless stream); over the ``world``
    ranks every selected sample appears exactly once per epoch; ranks' shares
    differ in size by at most ``num_workers``. ``kwargs`` go to
    :class:`CacheDataFlow` (``categories``, filters, ``check``, ``skip_corrupt``,
    ``with_attributes``, ``with_provenance``). Call ``reset_state()`` before iterating.
    """
    workers = max(1, int(num_workers))
    ds = ShardedCacheDataFlow(paths, rank=rank, world=world, num_workers=workers, worker=None if num_workers else 0,
                              seed=seed, shuffle=shuffle, decode=decode, start_epoch=start_epoch, **kwargs)
    if num_workers <= 0:
        return ds
    return EpochRunner(ds)
