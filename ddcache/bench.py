"""`ddcache bench`: stream caches the way training reads them and report throughput, latency and memory.

The pipeline measured is the one read path (``ddcache.dataflows``): a
``CacheSource`` that reads and checks records by key in this process,
shuffled per epoch as in training, feeding ``workers`` map processes
(0 = everything in this process). By default the workers decode
(``RecordDecoder``); with ``config`` they run the full training
preprocessing of that config -- decode, random resize, flip, RPN anchor
targets, the compact datapoint expanded here -- built by the very function
``ddtrain train`` uses (``trainer.train_data.build_train_dataflow``). Peak
RSS is sampled every 20 ms over this process and all its children
(psutil), so worker processes count.

tensorpack (and so TensorFlow, ~4 s) is imported only when the command runs:
the CLI imports this module at start-up to register the command.
"""
import json
import os
import threading
import time

import click
import psutil

from .errors import UserError


class _PeakRss:
    """Samples this process tree's RSS in the background (a context manager); read ``peak_mb`` / ``peak_anon_mb``."""

    def __init__(self, interval=0.02):
        self.interval = interval
        self.peak = 0
        self.peak_anon = 0
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self):
        """This process and its live descendants (workers come and go)."""
        try:
            return [self._proc] + self._proc.children(recursive=True)
        except psutil.NoSuchProcess:
            return [self._proc]

    def sample(self):
        total = anon = 0
        for p in self._tree():
            try:
                mem = p.memory_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += mem.rss
            # Linux: "shared" = file-backed + shmem resident pages (LMDB's mmap, libraries);
            # rss - shared is the private heap that really grows with what a process holds.
            anon += mem.rss - getattr(mem, "shared", 0)
        self.peak = max(self.peak, total)
        self.peak_anon = max(self.peak_anon, anon)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.sample()
        self.start = self.peak  # what the process tree held before the measured work (imports included)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def peak_mb(self):
        return self.peak / 1e6

    def tree_pss_mb(self):
        """Proportional set size of the tree now, MB: shared pages split between the processes sharing them.

        The honest total for forked workers, but ~10 ms per process to read,
        so it is taken once (at the end of streaming), not sampled.
        """
        total = 0
        for p in self._tree():
            try:
                total += getattr(p.memory_full_info(), "pss", 0)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 1e6

    @property
    def start_mb(self):
        return self.start / 1e6

    @property
    def peak_anon_mb(self):
        return self.peak_anon / 1e6


def run_bench(paths, workers=2, seconds=10.0, epoch=False, seed=0, config=None):
    """Stream ``paths`` (a cache or a list of shard caches) as training reads it; return the measurements.

    Args:
      workers: map worker processes (0 = read, decode and map in this process).
      seconds: stream for about this long (whole samples; ignored with ``epoch``).
      epoch: stream exactly one epoch instead, and report ``samples`` and ``unique`` (or ``dropped``).
      seed: shuffle seed.
      config: a trainer config (path): measure the full training input of
        ``ddtrain train`` with that config instead of decoding alone.

    Returns a dict: ``samples_per_s`` (samples after the first / seconds after
    the first, i.e. steady state), ``first_sample_s`` (seconds from start,
    including forking workers and opening LMDB, to the first sample),
    ``peak_rss_mb`` (MB, summed over the process tree: pages shared by
    forked workers and LMDB's mapped file pages count once per process),
    ``peak_anon_mb`` (the private part: RSS minus file-backed/shared pages),
    ``start_rss_mb`` (RSS before streaming, after imports: TensorFlow via
    tensorpack), ``end_pss_mb`` (PSS of the tree when streaming stopped:
    shared pages counted once overall), ``workers``, ``samples`` (decoded
    samples, or training datapoints with ``config``), ``seconds`` (total
    wall time), ``epochs`` (started), ``cache_size`` (selected records),
    ``pipeline`` ("decode" or "training"), ``dropped`` (records that gave no
    training datapoint: no box of a trained category) and, with ``epoch``
    and no ``config``, ``unique`` (distinct global indices seen).
    Raises UserError for a missing or invalid cache, config or argument.
    """
    if isinstance(paths, (str, bytes)) or hasattr(paths, "__fspath__"):
        paths = [paths]
    paths = list(paths)
    if workers < 0:
        raise UserError(f"--workers must be >= 0, not {workers}")
    if not epoch and (seconds is None or seconds <= 0):
        raise UserError("--seconds must be > 0 (or use --epoch)")
    from .store import CacheReader

    CacheReader(paths)  # a missing or invalid cache fails here, before the slow imports below
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow start-up chatter is not benchmark output
    build = _pipeline_builder(config)
    with _PeakRss() as rss:
        t0 = time.perf_counter()
        stream, source = build(paths, workers, seed)
        samples, seen, epochs = 0, set(), 0
        t_first = None
        try:
            stream.reset_state()
            while True:
                epochs += 1
                for sample in stream:
                    if t_first is None:
                        t_first = time.perf_counter()
                    samples += 1
                    if epoch and config is None:
                        seen.add(sample["index"])
                    elif not epoch and time.perf_counter() - t0 >= seconds:
                        break
                if epoch or time.perf_counter() - t0 >= seconds or len(source) == 0:
                    break
        finally:
            t_end = time.perf_counter()
            end_pss = rss.tree_pss_mb()
            stream.close()
    steady = t_end - t_first if t_first is not None else 0.0
    out = {
        "samples_per_s": (samples - 1) / steady if samples > 1 and steady > 0 else 0.0,
        "first_sample_s": (t_first - t0) if t_first is not None else None,
        "peak_rss_mb": rss.peak_mb,
        "peak_anon_mb": rss.peak_anon_mb,
        "start_rss_mb": rss.start_mb,
        "end_pss_mb": end_pss,
        "workers": workers,
        "samples": samples,
        "seconds": t_end - t0,
        "epochs": epochs,
        "cache_size": len(source),
        "pipeline": "decode" if config is None else "training",
        "dropped": stream.dropped,
    }
    if epoch and config is None:
        out["unique"] = len(seen)
    return out


def _pipeline_builder(config):
    """``build(paths, workers, seed) -> (stream, source)`` for decoding alone, or for ``config``'s training input.

    The config is read first (a mistake in it is one line, before TensorFlow
    prints anything), then everything is imported, before the clock starts
    (tensorpack imports TensorFlow: seconds).
    """
    if config is not None:
        import trainer  # noqa: F401  (legacy Keras for tensorpack, before TensorFlow is imported)
        from trainer.config import load_user_config

        cfg = load_user_config(config)
    from trainer.console import quiet_library_loggers

    from .dataflows import map_records
    from .source import CacheSource

    quiet_library_loggers()  # tensorpack's "fork may deadlock" warning is not benchmark output (as in ddtrain)
    if config is None:
        from .decoding import RecordDecoder

        def build(paths, workers, seed):
            source = CacheSource(paths, seed=seed, shuffle=True)
            return map_records(source, [RecordDecoder()], workers=workers), source

        return build
    from trainer.train_data import build_train_dataflow

    def build(paths, workers, seed):
        source = CacheSource(paths, seed=seed, shuffle=True)
        return build_train_dataflow(source, cfg, num_workers=workers, seed=seed), source

    return build


def _default_workers():
    from .build import available_cores

    return available_cores()


@click.command("bench")
@click.argument("caches", nargs=-1, required=True, type=click.Path())
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Map worker processes that decode (and with --config preprocess) the records read here "
                   "(0 = everything in this process). Default: all cores.")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="How long to stream (ignored with --epoch).")
@click.option("--epoch", is_flag=True, help="Stream exactly one epoch; also report the samples and how many were "
                                           "distinct (with --config: datapoints and records without a trained box).")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Also run this trainer config's training preprocessing (random resize, flip, RPN anchor targets), "
                   "exactly as `ddtrain train --workers N` feeds the model.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Shuffle seed.")
def bench(caches, workers, seconds, epoch, config, as_json, seed):
    """Stream caches as training reads them (workers decode, or with --config preprocess as training does);
    print samples/s, time to first sample, peak RSS."""
    from trainer.console import quiet_native_logs

    quiet_native_logs()  # TensorFlow's C++ start-up lines (printed on import, whatever TF_CPP_MIN_LOG_LEVEL says)
    if workers is None:
        workers = _default_workers()
    r = run_bench(list(caches), workers=workers, seconds=seconds, epoch=epoch, seed=seed, config=config)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    what = "samples" if config is None else "training datapoints"
    first = "n/a" if r["first_sample_s"] is None else f"{r['first_sample_s']:.3f} s"
    click.echo(f"{r['samples']} {what} in {r['seconds']:.1f} s with {r['workers']} worker(s): "
               f"{r['samples_per_s']:.1f} per s, first after {first}, peak RSS {r['peak_rss_mb']:.0f} MB")
    if epoch and config is None:
        click.echo(f"one epoch: {r['samples']} samples, {r['unique']} unique, cache selection {r['cache_size']}")
    elif epoch:
        click.echo(f"one epoch: {r['samples']} datapoints + {r['dropped']} records without a box of a trained "
                   f"category = {r['samples'] + r['dropped']} of the cache selection's {r['cache_size']}")
