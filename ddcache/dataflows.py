"""The read path, composed: cache source -> picklable map steps in worker processes -> the consuming process.

::

    source = CacheSource(paths, rank=r, world=R, seed=0, shuffle=True)   # read by key + checksum, this rank's share
    stream = map_records(source, [RecordDecoder(categories=["CELL"])], workers=2)
    stream.reset_state()
    for sample in stream:    # one epoch per iteration: each selected record exactly once over ranks x workers
        ...

Training builds the same thing with the training preprocessing as a
second step (``trainer.train_data.build_train_dataflow``), and ``ddcache
bench`` measures exactly these two compositions; there is no other way to
read a cache in parallel.

Why it is exact: one :class:`~ddcache.source.CacheSource` per rank yields
the rank's share of each epoch, and tensorpack's map (strict mode) sends
each record to one worker and yields, per ``__iter__``, the results of
exactly one pass of the source -- so every record of the epoch comes out
once, in an order interleaved across workers. An iteration stopped early
(or by an error) is continued by the next one: epochs are never cut short
or mixed, in worker processes or in this one.

Errors travel as typed values, never as exceptions inside a worker (a
worker that raises dies, and tensorpack's consumer would wait for its
replies forever): :class:`RecordSteps` returns a
:class:`~ddcache.source.CorruptRecord` (a record that is missing, fails its
checksum or does not decode), :class:`Dropped` (a step returned None: no
datapoint for this record) or :class:`MapFailure` (any other exception,
with its traceback) instead of raising, and :class:`RecordStream`, in the
consuming process, raises ``CorruptRecordError`` naming the key (or counts
it, ``skip_corrupt=True``), skips the dropped ones and raises RuntimeError
with the worker's traceback for a failure. A worker process that dies
raises ``WorkerDiedError`` (``ddcache.map_workers``).
"""
import traceback
from dataclasses import dataclass

from tensorpack.dataflow import ProxyDataFlow

from .errors import CorruptRecordError
from .map_workers import LosslessMapDataZMQ
from .source import CorruptRecord


@dataclass(frozen=True)
class Dropped:
    """A map step returned None for record ``key`` (e.g. no box of a trained category): no datapoint."""

    key: str


@dataclass(frozen=True)
class MapFailure:
    """A map step raised on record ``key``; ``error`` is the traceback text from the worker."""

    key: str
    error: str


class RecordSteps:
    """Picklable map function: apply ``steps`` in turn to an EncodedRecord; never raises (see module docstring).

    Returns the last step's result, or :class:`Dropped` / ``CorruptRecord`` /
    :class:`MapFailure`. A ``CorruptRecord`` from the source passes through
    untouched. Never returns None (tensorpack's strict map cannot skip).
    """

    def __init__(self, *steps):
        self.steps = steps

    def __call__(self, record):
        if isinstance(record, CorruptRecord):
            return record
        value = record
        try:
            for step in self.steps:
                value = step(value)
                if value is None:
                    return Dropped(record.key)
        except CorruptRecordError as exc:
            return CorruptRecord(exc.key, exc.reason)
        except Exception:  # noqa: BLE001 - reported to the consumer with its traceback
            return MapFailure(record.key, traceback.format_exc())
        return value


class RecordStream(ProxyDataFlow):
    """The consuming end of :func:`map_records`: step results, with the typed values turned into their meaning.

    ``corrupt``: keys skipped as corrupt (``skip_corrupt=True``); ``dropped``:
    records that gave no datapoint; ``then``: a function applied here to
    each result (e.g. expanding a compact datapoint). ``len()`` is the
    source's records per epoch.
    """

    def __init__(self, ds, skip_corrupt=False, then=None, workers=None):
        super().__init__(ds)
        self.skip_corrupt = bool(skip_corrupt)
        self.then = then
        self.workers = workers  # the LosslessMapDataZMQ, if the steps run in worker processes
        self.corrupt = []
        self.dropped = 0

    def __iter__(self):
        for value in self.ds:
            if isinstance(value, CorruptRecord):
                if not self.skip_corrupt:
                    raise value.error()
                self.corrupt.append(value.key)
            elif isinstance(value, Dropped):
                self.dropped += 1
            elif isinstance(value, MapFailure):
                raise RuntimeError(f"a map step failed on record {value.key}:\n{value.error}")
            else:
                yield value if self.then is None else self.then(value)

    @property
    def worker_pids(self):
        return self.workers.worker_pids if self.workers is not None else []

    def close(self):
        """Stop the worker processes, if any (idempotent)."""
        if self.workers is not None:
            self.workers.close()


class _MapHere:
    """``task`` over ``source`` in this process with the semantics of tensorpack's strict map: one pass of the
    source per ``__iter__``, and a pass left unfinished is continued by the next ``__iter__``."""

    def __init__(self, source, task):
        self.source, self.task = source, task
        self._epoch = None  # the source's pass in progress

    def reset_state(self):
        self.source.reset_state()
        self._epoch = None

    def __len__(self):
        return len(self.source)

    def __iter__(self):
        if self._epoch is None:
            self._epoch = iter(self.source)
        for record in self._epoch:
            yield self.task(record)
        self._epoch = None


def map_records(source, steps, workers=0, skip_corrupt=False, then=None, buffer_size=None):
    """``source`` (a CacheSource) mapped by ``steps`` (picklable callables, applied in order) -> a :class:`RecordStream`.

    ``workers == 0`` maps in this process; ``workers >= 1``
    forks that many :class:`~ddcache.map_workers.LosslessMapDataZMQ` workers,
    which receive the small encoded records. Strict mode either way: each
    ``__iter__`` is one pass of the source, i.e. one epoch (wrap in
    ``RepeatedData(stream, -1)`` for an endless stream). ``buffer_size``
    (records in flight) defaults to 2 per worker, at least 4: results are
    MB-sized images, and 2 per worker already hide a worker's jitter.
    Call ``reset_state()`` (forks the workers) before iterating.
    """
    task = RecordSteps(*steps)
    if workers <= 0 or len(source) == 0:
        return RecordStream(_MapHere(source, task), skip_corrupt, then)
    pool = LosslessMapDataZMQ(source, num_proc=int(workers), map_func=task,
                              buffer_size=buffer_size or max(4, 2 * int(workers)), strict=True)
    return RecordStream(pool, skip_corrupt, then, workers=pool)
