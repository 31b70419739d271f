"""Build a cache: read annotation lines -> crop in worker processes -> write records in order -> publish.

Guarantees and how they are kept:

* **Deterministic**: tasks are numbered in reading order; workers are pure
  functions of their task; the writer consumes results strictly in task
  order. Same input + options -> same records, same keys, whatever
  ``workers`` is.
* **Resumable**: records, checksums, skip entries and this build's progress
  (tasks accounted for) are committed together (``ddcache.writer``). After
  a SIGKILL the partial cache holds a consistent prefix; a re-run with the
  same options skips the tasks already accounted for and continues.
* **Atomic publish**: the writer fills ``OUT.partial/``, writes
  ``manifest.json`` once every record is in, and renames the directory to
  ``OUT``. Readers accept only a directory with a manifest.
* **Bounded memory**: at most ``window`` tasks are in flight, so RSS does not
  grow with the number of tables.
* **Nothing lost**: every annotation line read is either written or skipped
  with a reason (``num_read == num_tables_written + num_skipped``), whatever
  the line holds (hostile input is bounded by ``input_limits``).
* **Nothing deleted that ddcache did not create**: ``--out`` may not overlap
  ``--source``; one build per ``--out`` and what ``--overwrite`` may replace
  are decided by the writer (``ddcache.writer``, ``ddcache.cache_dir``).
"""
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lmdb

from . import categories as C
from .cache_dir import partial_dir, write_failure
from .codec import ENCODINGS, encode_record
from .crop import make_page_sample, make_table_sample
from .datasets import get_reader
from .datasets.base import LineRef, ReadOptions, read_line
from .errors import SkipSample, UserError
from .input_limits import MAX_GRID, MAX_LINE_BYTES, MAX_PIXELS, MAX_TABLES_PER_PAGE
from .outputs import check_disjoint
from .resolution import Resolution
from .selection import RecordFilter
from .writer import CacheHeader, CacheWriter, Skip


@dataclass
class BuildOptions:
    """Everything a build depends on. :meth:`record_options` are the ones that decide the records."""

    dataset: str
    source: str
    split: str = "train"
    mode: str = "table"
    out: str = ""
    workers: int = 0  # 0 = all cores
    encoding: str = "png"
    jpeg_quality: int = 90
    resolution: Resolution = field(default_factory=Resolution)
    pad: float = 0.0  # source units around the table box
    first_row_header: bool = False
    annotations: str = "table"
    max_datapoints: int = None
    record_filter: RecordFilter = field(default_factory=RecordFilter)
    shard: tuple = (0, 1)
    max_line_bytes: int = MAX_LINE_BYTES  # input limits (input_limits.py): what one line may make a build allocate
    max_grid: int = MAX_GRID
    max_pixels: int = MAX_PIXELS
    overwrite: bool = False
    commit_every: int = 32  # records + skips per commit

    @property
    def read_options(self):
        return ReadOptions(first_row_header=self.first_row_header, annotations=self.annotations,
                           max_line_bytes=self.max_line_bytes, max_grid=self.max_grid)

    def record_options(self):
        """The options that decide which records a cache holds (compared on resume, kept in the manifest)."""
        return {
            "dataset": self.dataset, "split": self.split, "mode": self.mode, "encoding": self.encoding,
            "jpeg_quality": self.jpeg_quality, **self.resolution.as_options(), "pad": self.pad,
            "first_row_header": self.first_row_header, "annotations": self.annotations,
            "max_datapoints": self.max_datapoints, **self.record_filter.as_options(), "shard": list(self.shard),
            "max_line_bytes": self.max_line_bytes, "max_grid": self.max_grid, "max_pixels": self.max_pixels,
        }

    def header(self):
        """The :class:`~ddcache.writer.CacheHeader` of the cache these options build."""
        return CacheHeader(self.dataset, self.split, self.mode, self.record_options(),
                           tuple(self.shard) if self.shard[1] > 1 else None)


# ---------------------------------------------------------------- tasks


@dataclass
class Task:
    """One unit of work: one annotation line (table mode) or all lines of one page (page mode, as LineRefs)."""

    seq: int
    lines: list


@dataclass
class TaskResult:
    """What one task became: a record (or none) and a :class:`~ddcache.writer.Skip` per line not written."""

    seq: int
    lines: int  # annotation lines the task covered
    skips: list
    record: bytes = None  # msgpack record (codec.encode_record), None if every line was skipped
    index: tuple = None  # (num_rows, num_cols, num_cells) of the record: the manifest index
    tables: int = 0  # tables in the record (page mode: several)
    dropped: int = 0  # boxes dropped while cropping (thinner than 1 px after clipping)
    boxes: dict = field(default_factory=dict)  # category name -> boxes in the record


@dataclass
class BuildProgress:
    """This build's resumable counters (committed with the records; the writer keeps records, bytes and skips)."""

    tasks: int = 0
    read: int = 0
    tables: int = 0
    dropped_boxes: int = 0
    boxes: dict = field(default_factory=dict)
    done: bool = False

    def add(self, result):
        self.tasks += 1
        self.read += result.lines
        if result.record is not None:
            self.tables += result.tables
            self.dropped_boxes += result.dropped
            for name, n in result.boxes.items():
                self.boxes[name] = self.boxes.get(name, 0) + n


def iter_tasks(reader, opts):
    """Deterministic task stream for ``opts`` (split, mode, shard applied)."""
    lines = reader.annotation_lines(opts.source, opts.split, opts.read_options)
    shard_i, shard_n = opts.shard
    if opts.mode == "table":
        seq = 0
        for line in lines:
            if seq % shard_n == shard_i:
                yield Task(seq, [line])
            seq += 1
        return
    # Page mode: a page's tables may be anywhere in the file, so lines are grouped by page (first appearance
    # order) before the first task. Only each line's position (LineRef) is kept, never the parsed line (20K
    # lines held ~770 MB that way); the worker reads its page's lines again. Unparsed lines are kept as they are
    # (no record: a few bytes), and a line without a usable filename is a page of its own.
    pages = {}
    for line in lines:
        key = line.page_key or ("line", line.line_no)
        pages.setdefault(key, []).append(line.ref() if line.record is not None else line)
    for seq, refs in enumerate(pages.values()):
        if seq % shard_n == shard_i:
            yield Task(seq, refs)


# ---------------------------------------------------------------- worker side

_WORKER = {}


def _init_worker(opts):
    _WORKER.update(opts=opts, reader=get_reader(opts.dataset))


def _init_pool_worker(opts):
    """Pool initializer: ignore SIGINT, then :func:`_init_worker`.

    A terminal's Ctrl-C reaches every process of the group. A pool worker
    killed by it while holding the pool's task-queue lock, or halfway through
    writing a result, leaves the pool's teardown waiting forever (seen: one
    Ctrl-C in ten hung). The parent alone handles Ctrl-C and stops the pool.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _init_worker(opts)


def _skip(line, reason, detail):
    return Skip(reason, line.annotation_file, line.line_no, str(detail)[:300])


def process_task(task):
    """Task -> :class:`TaskResult`.

    Runs in a worker process; never raises for bad data (SkipSample becomes a
    skip entry; any other error too, tagged ``error``, so one odd page cannot
    stop a 100K-table build).
    """
    opts, reader = _WORKER["opts"], _WORKER["reader"]
    skips, anns = [], []
    for n, line in enumerate(task.lines):
        if n >= MAX_TABLES_PER_PAGE:  # not even read again: a page of 20K "tables" is hostile input
            skips.append(_skip(line, "too_large", f"page has more than {MAX_TABLES_PER_PAGE} tables"))
            continue
        if isinstance(line, LineRef):
            line = read_line(line, opts.max_line_bytes)
        if line.record is None:
            skips.append(_skip(line, line.reason, line.error))
            continue
        try:
            ann = reader.parse(line, opts.read_options)
        except SkipSample as exc:
            skips.append(_skip(line, exc.reason, exc.detail))
            continue
        except Exception as exc:  # noqa: BLE001 - a reader bug on odd input is counted, never fatal
            skips.append(_skip(line, "error", f"{type(exc).__name__}: {exc}"))
            continue
        reason = opts.record_filter.rejects(ann.num_rows, ann.num_cols, len(ann.boxed_cells))
        if reason:
            skips.append(_skip(line, reason, ""))
            continue
        anns.append((line, ann))
    if not anns:
        return TaskResult(task.seq, len(task.lines), skips)
    page = None
    try:
        page = reader.open_page(opts.source, anns[0][1])
        if opts.mode == "table":
            sample, dropped = make_table_sample(anns[0][1], page, opts.dataset, opts.resolution, opts.pad, reader.raster,
                                                opts.max_pixels)
        else:
            sample, dropped = make_page_sample([a for _, a in anns], page, opts.dataset, opts.resolution, reader.raster,
                                               opts.max_pixels)
        raw = encode_record(sample, opts.encoding, opts.jpeg_quality)
    except SkipSample as exc:
        return TaskResult(task.seq, len(task.lines), skips + [_skip(line, exc.reason, exc.detail) for line, _ in anns])
    except Exception as exc:  # noqa: BLE001 - counted, never fatal
        return TaskResult(task.seq, len(task.lines),
                          skips + [_skip(line, "error", f"{type(exc).__name__}: {exc}") for line, _ in anns])
    finally:
        if page is not None:
            page.close()
    cats = sample["category_ids"]
    return TaskResult(
        task.seq, len(task.lines), skips, record=raw,
        index=(int(sample["num_rows"]), int(sample["num_cols"]), int((cats == C.CELL).sum())),
        tables=len(anns), dropped=dropped,
        boxes={C.NAMES[int(c)]: int((cats == c).sum()) for c in sorted(set(cats.tolist()))},
    )


def render_samples(opts):
    """In-memory samples (image arrays) for ``opts``, in build order, single process.

    The 'render on the fly' path used by benchmarks and previews; skipped
    lines are silently left out here (the build is what counts them).
    """
    from .codec import decode_record
    from .manifest import record_key

    reader = get_reader(opts.dataset)
    reader.check_source(opts.source, opts.split, opts.read_options)
    _init_worker(opts)
    produced = 0
    for task in iter_tasks(reader, opts):
        result = process_task(task)
        if result.record is None:
            continue
        yield decode_record(record_key(produced), result.record)
        produced += 1
        if opts.max_datapoints is not None and produced >= opts.max_datapoints:
            return


# ---------------------------------------------------------------- writer side


def _results(tasks, opts):
    """Results in task order, computed in a bounded pool (or inline for 1 worker)."""
    workers = opts.workers or available_cores()
    if workers == 1:
        _init_worker(opts)
        for task in tasks:
            yield process_task(task)
        return
    ctx = mp.get_context("fork")
    window = workers * 8
    # SIGINT stays blocked while the pool forks, so no worker exists without its SIG_IGN (_init_pool_worker)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        pool = ctx.Pool(workers, initializer=_init_pool_worker, initargs=(opts,))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    with pool:
        pending = deque()
        tasks = iter(tasks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                try:
                    task = next(tasks)
                except StopIteration:
                    exhausted = True
                    break
                pending.append(pool.apply_async(process_task, (task,)))
            if not pending:
                return
            yield pending.popleft().get()


def available_cores():
    """Cores this process may run on (cgroup/affinity aware, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def check_build_options(opts):
    """UserError (one line) unless ``opts`` names a buildable dataset, mode, encoding, shard and source, and an
    ``--out`` that does not overlap ``--source``; returns the reader."""
    reader = get_reader(opts.dataset)
    if opts.mode not in reader.modes:
        raise UserError(f"{reader.name} supports --mode {' / '.join(reader.modes)}, not {opts.mode!r}")
    if opts.encoding not in ENCODINGS:
        raise UserError(f"unknown --encoding {opts.encoding!r}; choose from {', '.join(ENCODINGS)}")
    shard_i, shard_n = opts.shard
    if not (shard_n >= 1 and 0 <= shard_i < shard_n):
        raise UserError(f"--shard {shard_i}/{shard_n}: expected I/N with 0 <= I < N")
    reader.check_source(opts.source, opts.split, opts.read_options)
    if opts.out:
        for target in (Path(opts.out), partial_dir(opts.out)):
            check_disjoint(target, [opts.source], "--out", "--source")
    return reader


def build_cache(opts, progress=True, echo=print):
    """Build (or resume) the cache described by ``opts``; returns the manifest's counts + ``out``.

    ``--out`` may not overlap ``--source``; one build per ``--out`` at a time
    and ``--overwrite`` replacing only a cache are the writer's
    (``CacheWriter.open``); a full disk ends with one line and the next run resumes.
    """
    reader = check_build_options(opts)
    if not opts.out:
        raise UserError("--out is required")
    try:
        return _build(reader, opts, progress, echo)
    except (OSError, lmdb.Error) as exc:
        failure = write_failure(exc, partial_dir(opts.out))
        if failure is None:
            raise
        raise failure from None


def _build(reader, opts, show_progress, echo):
    with CacheWriter.open(opts.out, opts.header(), overwrite=opts.overwrite) as writer:
        progress = BuildProgress(**writer.state) if writer.state else BuildProgress()
        if writer.resumed and progress.tasks:
            echo(f"resuming {writer.partial}: {writer.num_records} records written, {progress.read} lines read")
        if not (progress.done or writer.complete):
            _write(reader, opts, writer, progress, show_progress)
        manifest = writer.finish(
            {"num_read": progress.read, "num_tables_written": progress.tables,
             "boxes_per_category": dict(sorted(progress.boxes.items())), "dropped_boxes": progress.dropped_boxes},
            encoding=opts.encoding, source=str(Path(opts.source).resolve()))
    return {"out": str(writer.out), **manifest["counts"]}


def _progress_total(reader, opts):
    """Annotation lines this build will read, for the progress bar (None when not cheaply known)."""
    total = reader.count_lines(opts.source, opts.split, opts.read_options)
    if total is None or opts.mode != "table":
        return None
    total = -(-(total - opts.shard[0]) // opts.shard[1])
    return min(total, opts.max_datapoints) if opts.max_datapoints else total


def _write(reader, opts, writer, progress, show_progress):
    """Process the tasks not yet accounted for, appending records and skips in task order, committing as it goes."""
    from tqdm import tqdm

    bar = tqdm(total=_progress_total(reader, opts), initial=progress.read, unit="table",
               desc=f"build {opts.dataset}/{opts.split}", disable=not show_progress, dynamic_ncols=True, smoothing=0.1)
    tasks = (t for i, t in enumerate(iter_tasks(reader, opts)) if i >= progress.tasks)
    last_commit = time.monotonic()
    try:
        for result in _results(tasks, opts):
            progress.add(result)
            for skip in result.skips:
                writer.skip(skip)
            if result.record is not None:
                writer.append(result.record, result.index)
            bar.update(result.lines)
            finished = opts.max_datapoints is not None and writer.num_records >= opts.max_datapoints
            if finished:
                break
            if writer.uncommitted >= opts.commit_every or time.monotonic() - last_commit > 2.0:
                writer.commit(asdict(progress))
                last_commit = time.monotonic()
        progress.done = True
        writer.commit(asdict(progress))
    finally:
        bar.close()
