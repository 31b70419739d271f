"""Build a cache: read annotation lines -> crop in worker processes -> write LMDB in order -> publish.

Guarantees and how they are kept:

* **Deterministic**: tasks are numbered in reading order; workers are pure
  functions of their task; the writer consumes results strictly in task
  order. Same input + options -> same records, same keys, whatever
  ``workers`` is.
* **Resumable**: records, checksums, skip entries and the progress counter
  are committed in one LMDB transaction per batch. After a SIGKILL the
  partial cache holds a consistent prefix; a re-run with the same options
  skips the tasks already accounted for and continues.
* **Atomic publish**: the build writes ``OUT.partial/``; ``manifest.json``
  is written last and the directory renamed to ``OUT``. Readers accept only a
  directory with a manifest.
* **Bounded memory**: at most ``window`` tasks are in flight, so RSS does not
  grow with the number of tables.
* **Nothing lost**: every annotation line read is either written or skipped
  with a reason (``num_read == num_tables_written + sum(skipped)``).
"""
import json
import multiprocessing as mp
import os
import shutil
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lmdb

from . import __version__
from . import categories as C
from .cache_dir import BuildLock, partial_dir, prepare, publish, write_failure
from .codec import checksum, encode_record, ENCODINGS
from .crop import make_page_sample, make_table_sample
from .datasets import get_reader
from .errors import SkipSample, UserError
from .datasets.base import LineRef, read_line
from .input_limits import MAX_GRID, MAX_LINE_BYTES, MAX_PIXELS, MAX_TABLES_PER_PAGE
from .manifest import SKIP_REPORT_NAME, append_record, new_manifest, record_key, write_manifest
from .outputs import check_disjoint

FILTERS = ("min_rows", "max_rows", "min_cols", "max_cols", "min_cells", "max_cells")


@dataclass
class BuildOptions:
    """Everything a build depends on. Fields in ``record_fields`` decide record content."""

    dataset: str
    source: str
    split: str = "train"
    mode: str = "table"
    out: str = ""
    workers: int = 0  # 0 = all cores
    encoding: str = "png"
    jpeg_quality: int = 90
    dpi: object = "auto"
    max_short: int = 1200
    max_long: int = 1408
    pad: float = 0.0
    first_row_header: bool = False
    annotations: str = "table"
    max_datapoints: int = None
    min_rows: int = None
    max_rows: int = None
    min_cols: int = None
    max_cols: int = None
    min_cells: int = None
    max_cells: int = None
    shard: tuple = (0, 1)
    max_line_bytes: int = MAX_LINE_BYTES
    max_grid: int = MAX_GRID
    max_pixels: int = MAX_PIXELS
    overwrite: bool = False
    commit_every: int = 32
    extra: dict = field(default_factory=dict)

    record_fields = (
        "dataset", "split", "mode", "encoding", "jpeg_quality", "dpi", "max_short", "max_long", "pad",
        "first_row_header", "annotations", "max_datapoints", *FILTERS, "shard", "max_line_bytes", "max_grid",
        "max_pixels",
    )

    def record_options(self):
        """The options that decide which records a cache holds (compared on resume, kept in the manifest)."""
        d = asdict(self)
        out = {k: d[k] for k in self.record_fields}
        out["shard"] = list(out["shard"])
        return out


# ---------------------------------------------------------------- tasks


@dataclass
class Task:
    """One unit of work: one annotation line (table mode) or all lines of one page (page mode, as LineRefs)."""

    seq: int
    lines: list


def iter_tasks(reader, opts):
    """Deterministic task stream for ``opts`` (split, mode, shard applied)."""
    lines = reader.annotation_lines(opts.source, opts.split, _reader_options(opts))
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
    # lines held ~830 MB that way); the worker reads its page's lines again. Unparsed lines are kept as they are
    # (no record: a few bytes), and a line without a usable filename is a page of its own.
    pages = {}
    for line in lines:
        key = line.page_key or ("line", line.line_no)
        pages.setdefault(key, []).append(line.ref() if line.record is not None else line)
    for seq, refs in enumerate(pages.values()):
        if seq % shard_n == shard_i:
            yield Task(seq, refs)


def _reader_options(opts):
    return {"first_row_header": opts.first_row_header, "annotations": opts.annotations,
            "max_line_bytes": opts.max_line_bytes, "max_grid": opts.max_grid}


def _crop_options(opts, reader):
    return {"dpi": opts.dpi, "max_short": opts.max_short, "max_long": opts.max_long, "pad": opts.pad, "raster": reader.raster,
            "max_pixels": opts.max_pixels}


def _filter_reason(ann, opts):
    n_cells = len(ann.boxed_cells)
    checks = (
        ("min_rows", ann.num_rows, lambda v, b: v < b),
        ("max_rows", ann.num_rows, lambda v, b: v > b),
        ("min_cols", ann.num_cols, lambda v, b: v < b),
        ("max_cols", ann.num_cols, lambda v, b: v > b),
        ("min_cells", n_cells, lambda v, b: v < b),
        ("max_cells", n_cells, lambda v, b: v > b),
    )
    for name, value, fails in checks:
        bound = getattr(opts, name)
        if bound is not None and fails(value, bound):
            return f"filter:{name}"
    return None


# ---------------------------------------------------------------- worker side

_WORKER = {}


def _init_worker(opts):
    reader = get_reader(opts.dataset)
    _WORKER.update(opts=opts, reader=reader, crop=_crop_options(opts, reader))


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
    return {"reason": reason, "file": line.annotation_file, "line_no": line.line_no, "detail": str(detail)[:300]}


def process_task(task):
    """Task -> result dict: ``record`` (bytes) + stats, and ``skips`` for lines not written.

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
            ann = reader.parse(line, _reader_options(opts))
        except SkipSample as exc:
            skips.append(_skip(line, exc.reason, exc.detail))
            continue
        except Exception as exc:  # noqa: BLE001 - a reader bug on odd input is counted, never fatal
            skips.append(_skip(line, "error", f"{type(exc).__name__}: {exc}"))
            continue
        reason = _filter_reason(ann, opts)
        if reason:
            skips.append(_skip(line, reason, ""))
            continue
        anns.append((line, ann))
    if not anns:
        return {"seq": task.seq, "record": None, "skips": skips, "lines": len(task.lines)}
    page = None
    try:
        page = reader.open_page(opts.source, anns[0][1])
        if opts.mode == "table":
            sample, dropped = make_table_sample(anns[0][1], page, _WORKER["crop"], opts.dataset)
        else:
            sample, dropped = make_page_sample([a for _, a in anns], page, _WORKER["crop"], opts.dataset)
        raw = encode_record(sample, opts.encoding, opts.jpeg_quality)
    except SkipSample as exc:
        return {"seq": task.seq, "record": None, "lines": len(task.lines),
                "skips": skips + [_skip(line, exc.reason, exc.detail) for line, _ in anns]}
    except Exception as exc:  # noqa: BLE001 - counted, never fatal
        return {"seq": task.seq, "record": None, "lines": len(task.lines),
                "skips": skips + [_skip(line, "error", f"{type(exc).__name__}: {exc}") for line, _ in anns]}
    finally:
        if page is not None:
            page.close()
    cats = sample["category_ids"]
    return {
        "seq": task.seq,
        "record": raw,
        "skips": skips,
        "lines": len(task.lines),
        "tables": len(anns),
        "dropped": dropped,
        "index": [int(sample["num_rows"]), int(sample["num_cols"]), int((cats == C.CELL).sum())],
        "boxes": {C.NAMES[int(c)]: int((cats == c).sum()) for c in sorted(set(cats.tolist()))},
    }


def render_samples(opts):
    """In-memory samples (image arrays) for ``opts``, in build order, single process.

    The 'render on the fly' path used by benchmarks and previews; skipped
    lines are silently left out here (the build is what counts them).
    """
    from .codec import decode_record

    reader = get_reader(opts.dataset)
    reader.check_source(opts.source, opts.split, _reader_options(opts))
    _init_worker(opts)
    produced = 0
    for task in iter_tasks(reader, opts):
        result = process_task(task)
        if result["record"] is None:
            continue
        yield decode_record(record_key(produced), result["record"])
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


def _fresh_progress():
    return {"tasks": 0, "read": 0, "written": 0, "tables": 0, "skipped": {}, "boxes": {}, "dropped_boxes": 0, "bytes": 0, "done": False}


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
    if not opts.out:
        raise UserError("--out is required")
    reader.check_source(opts.source, opts.split, _reader_options(opts))
    for target in (Path(opts.out), partial_dir(opts.out)):
        check_disjoint(target, [opts.source], "--out", "--source")
    return reader


def build_cache(opts, progress=True, echo=print):
    """Build (or resume) the cache described by ``opts``; returns the manifest's counts + paths.

    ``--out`` may not overlap ``--source``; one build per ``--out`` at a time
    (``cache_dir.BuildLock``); ``--overwrite`` replaces only a cache; a full
    disk ends with one line and the next run resumes.
    """
    reader = check_build_options(opts)
    out = Path(opts.out)
    partial = partial_dir(out)
    try:  # the CLI requires --out's folder to exist (outputs.check_output); API callers (shard builds) get it made
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out.parent}: {exc.strerror}") from None
    with BuildLock(out):
        prepare(out, opts.overwrite)
        try:
            return _build(reader, opts, out, partial, progress, echo)
        except (OSError, lmdb.Error) as exc:
            failure = write_failure(exc, partial)
            if failure is None:
                raise
            raise failure from None


def _build(reader, opts, out, partial, progress, echo):
    writer = _open_writer(partial)
    try:
        saved = writer.get_meta("options")
        wanted = opts.record_options()
        if saved is not None and saved != wanted and opts.overwrite:
            writer.close()
            shutil.rmtree(partial)  # --overwrite: an old unfinished build with other options is discarded
            writer = _open_writer(partial)
            saved = None
        if saved is not None and saved != wanted:
            changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
            raise UserError(
                f"{partial} is an unfinished build with other options ({', '.join(changed)}); "
                "re-run with the same options to resume, or delete it"
            )
        state = writer.get_meta("progress") or _fresh_progress()
        if saved is None:
            writer.commit([], {"options": wanted, "progress": state})
        elif state["tasks"]:
            echo(f"resuming {partial}: {state['written']} records written, {state['read']} lines read")
        if not state["done"]:
            _run(reader, opts, writer, state, progress)
        return _publish(reader, opts, writer, state, out, partial)
    finally:
        if writer.env is not None:
            try:
                writer.close()
            except lmdb.Error:
                pass


def _open_writer(partial):
    from .store import LmdbWriter

    return LmdbWriter(partial)


def _count_lines(reader, opts):
    """Annotation lines in this build (for the progress bar total; cheap relative to rendering)."""
    try:
        if reader.name == "fintabnet":
            path = reader.annotation_path(opts.source, opts.split, _reader_options(opts))
            with open(path, "rb") as f:
                return sum(1 for line in f if line.strip())
    except OSError:
        pass
    return None


def _run(reader, opts, writer, state, progress):
    from tqdm import tqdm

    total = _count_lines(reader, opts)
    if total is not None:
        total = -(-(total - opts.shard[0]) // opts.shard[1]) if opts.mode == "table" else None
    if total is not None and opts.max_datapoints:
        total = min(total, opts.max_datapoints)
    bar = tqdm(total=total, initial=state["read"], unit="table", desc=f"build {opts.dataset}/{opts.split}",
               disable=not progress, dynamic_ncols=True, smoothing=0.1)
    done_tasks = state["tasks"]
    tasks = (t for i, t in enumerate(iter_tasks(reader, opts)) if i >= done_tasks)
    batch, meta, last_commit = [], {}, time.monotonic()
    limit = opts.max_datapoints
    try:
        for result in _results(tasks, opts):
            state["tasks"] += 1
            state["read"] += result["lines"]
            for skip in result["skips"]:
                state["skipped"][skip["reason"]] = state["skipped"].get(skip["reason"], 0) + 1
                meta[f"skip/{result['seq']:010d}/{skip['line_no']:09d}"] = skip
            raw = result["record"]
            if raw is not None:
                key = record_key(state["written"])
                batch.append((key, raw))
                meta[f"sum/{key}"] = [checksum(raw), *result["index"]]
                state["written"] += 1
                state["tables"] += result["tables"]
                state["bytes"] += len(raw)
                state["dropped_boxes"] += result["dropped"]
                for name, n in result["boxes"].items():
                    state["boxes"][name] = state["boxes"].get(name, 0) + n
            bar.update(result["lines"])
            finished = limit is not None and state["written"] >= limit
            if finished or len(batch) + len(meta) >= opts.commit_every or time.monotonic() - last_commit > 2.0:
                if finished:
                    state["done"] = True
                writer.commit(batch, {**meta, "progress": state})
                batch, meta, last_commit = [], {}, time.monotonic()
            if finished:
                break
        state["done"] = True
        writer.commit(batch, {**meta, "progress": state})
    finally:
        bar.close()


def _publish(reader, opts, writer, state, out, partial):
    """Write the skip report and manifest into the partial dir, then rename it into place."""
    manifest = new_manifest(opts.dataset, opts.split, opts.mode, C.IDS, opts.record_options(),
                            opts.shard if opts.shard[1] > 1 else None)
    for name, (digest, rows, cols, cells) in writer.iter_meta("sum/"):
        append_record(manifest, digest, rows, cols, cells)
    if len(manifest["checksums"]) != state["written"]:
        raise RuntimeError(f"internal: {len(manifest['checksums'])} checksums for {state['written']} records")
    skipped_total = sum(state["skipped"].values())
    manifest["counts"] = {
        "num_samples": state["written"],
        "num_read": state["read"],
        "num_tables_written": state["tables"],
        "num_skipped": skipped_total,
        "skipped": dict(sorted(state["skipped"].items())),
        "boxes_per_category": dict(sorted(state["boxes"].items())),
        "dropped_boxes": state["dropped_boxes"],
        "bytes": state["bytes"],
    }
    manifest["encoding"] = opts.encoding
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    manifest["source"] = str(Path(opts.source).resolve())
    with open(partial / SKIP_REPORT_NAME, "w", encoding="utf-8") as f:
        for _, skip in writer.iter_meta("skip/"):
            f.write(json.dumps(skip, sort_keys=True) + "\n")
    writer.close()
    writer.env = None
    write_manifest(partial, manifest)
    publish(partial, out)
    return {"out": str(out), **manifest["counts"]}
