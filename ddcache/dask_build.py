"""``ddcache build ... --dask SCHEDULER|local[:K] --shards N``: one Dask task per shard, one shard set as the result.

Shard ``I`` is exactly the serial ``--shard I/N`` build written to
``OUT/shard-I-of-N`` (``ddcache.shard_set``); together the shards hold the
serial build's records and checksums, in shard order, and ``OUT`` reads as
one dataset everywhere.

Each task runs the ordinary build (``build.build_cache``) in a subprocess of
its Dask worker (``python -m ddcache.dask_build``, options pickled on stdin,
the summary as JSON on stdout). Why a subprocess rather than calling the
build in the task: Dask workers are daemonic processes and a daemonic process
may not start the build's process pool. Turning ``distributed.worker.daemon``
off would only work for clusters started with that setting, which
``--dask tcp://...`` cannot choose; a subprocess works on any cluster, and a
crash in a renderer kills only the subprocess. The subprocess dies with the
worker thread that waits for it (``PR_SET_PDEATHSIG``), so a lost worker never
leaves a second writer on a shard's ``.partial``.

Failures: when a worker is lost, the scheduler runs its shard elsewhere; a
build that crashes (exit code other than 0 or 2) is retried ``RETRIES`` times.
Either way the new attempt resumes from the shard's ``.partial``, which needs
``--out`` on storage every worker sees under the same path (as ``--source``).
A user mistake inside a shard (exit 2) is reported as one line, not retried.
Re-running the same command skips finished shards and resumes the others;
Ctrl-C stops the running shard builds (they resume on the next run).
"""
import dataclasses
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .cache_dir import CACHE_FILES, remove_cache_dir
from .errors import UserError
from .manifest import says_ddcache
from .outputs import check_output
from .shard_set import shard_dir_name, shard_entries

RETRIES = 2
_PR_SET_PDEATHSIG = 1
MISSING_DASK = "--dask needs Dask distributed: pip install -e .[dask]  (or: pip install 'dask[distributed]')"


class ShardBuildFailed(RuntimeError):
    """A shard's build subprocess ended abnormally (raised in the task so that Dask retries it)."""


def parse_scheduler(value):
    """``"local"`` / ``"local:K"`` -> ``("local", K or None)``; anything else -> ``("remote", address)``."""
    if value == "local" or value.startswith("local:"):
        count = value.partition(":")[2]
        if count and not (count.isdigit() and int(count) >= 1):
            raise UserError(f"--dask {value}: expected local or local:K with K >= 1 workers")
        return "local", int(count) if count else None
    return "remote", value


def shard_options(opts, parent, index, count):
    """The serial build options of shard ``index`` of ``count`` inside the shard-set directory ``parent``."""
    return dataclasses.replace(opts, shard=(index, count), out=str(Path(parent) / shard_dir_name(index, count)))


def finished_summary(opts):
    """The build summary of shard cache ``opts.out`` if it is finished with the same record options, else None.

    UserError if it is finished with other options (its records would not be
    those asked for).
    """
    from .manifest import read_manifest

    out = Path(opts.out)
    if not (out / "manifest.json").is_file():
        return None
    manifest = read_manifest(out)
    wanted = opts.record_options()
    if manifest["build_options"] != wanted:
        changed = sorted(k for k in wanted if manifest["build_options"].get(k) != wanted[k])
        raise UserError(f"{out} was built with other options ({', '.join(changed)}); use --overwrite to rebuild")
    return {"out": str(out), **manifest["counts"]}


def plan(opts, parent, count):
    """Shard indices still to build in ``parent``, after the checks (and, with --overwrite, the removals) they need.

    Without ``--overwrite``: ``parent`` must not be a single cache nor hold
    shards of another shard count; finished shards with the same options are
    kept (re-running resumes), with other options are an error. With
    ``--overwrite`` every finished cache in ``parent`` is removed first
    (unfinished ``.partial`` shards with the same options still resume).
    """
    parent = Path(parent)
    if parent.exists() and not parent.is_dir():
        raise UserError(f"--out {parent}: exists and is not a directory")
    entries = shard_entries(parent)
    if (parent / "manifest.json").is_file():
        if not opts.overwrite:
            raise UserError(f"{parent} is a single cache; use --overwrite to replace it with {count} shards")
        _remove_cache(parent)
        entries = []
    stray = [(i, n, path) for i, n, path, _ in entries if n != count]
    if stray and not opts.overwrite:
        raise UserError(f"{parent} holds shards of a {stray[0][1]}-shard build; use --shards {stray[0][1]} to resume "
                        "it, or --overwrite")
    if opts.overwrite:
        for _, n, path, finished in entries:
            if finished or n != count:
                _remove_cache(path)
    todo = []
    for index in range(count):
        if finished_summary(shard_options(opts, parent, index, count)) is None:
            todo.append(index)
    return todo


def _remove_cache(path):
    """Delete the cache (or ``.partial`` shard) ``path`` for ``--overwrite``, by the rule of a serial build
    (``cache_dir``): only a directory of cache files with a ddcache manifest; anything else is a UserError and
    is left alone (was: ``rmtree`` of any ``--out`` holding some ``manifest.json``, the user's other files too)."""
    path = Path(path)
    signed = None if path.name.endswith(".partial") else says_ddcache
    check_output(path, "--out", overwrite=True, owned=(CACHE_FILES, "a ddcache cache", signed))
    remove_cache_dir(path)


# ---------------------------------------------------------------- worker side


def _die_with_parent(parent_pid):
    """Ask Linux to SIGKILL this process when the thread that started it ends (the task's worker thread).

    Done in the subprocess itself rather than in a ``preexec_fn``, which is
    unsafe in a multi-threaded Dask worker; the parent check closes the window
    before the call.
    """
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(1)


def build_shard(opts, host_threads, stop_name):
    """Dask task: build one shard in a subprocess; returns its summary plus ``log`` (the build's messages).

    ``opts.workers == 0`` becomes this machine's cores divided by the Dask
    threads on it (``host_threads``: host -> threads), so shards that run side
    by side on one machine do not oversubscribe it. A finished shard with the
    same options is returned as is (a retry after its worker was lost just
    after publishing). The subprocess is killed when the Dask event
    ``stop_name`` is set (Ctrl-C in the client).
    """
    from distributed import Event, get_worker
    from distributed.comm import get_address_host

    from .build import available_cores

    done = finished_summary(opts)
    if done is not None:
        return {**done, "log": [], "code": 0, "host": socket.gethostname(), "seconds": 0.0}
    if not opts.workers:
        host = get_address_host(get_worker().address)
        opts = dataclasses.replace(opts, workers=max(1, available_cores() // max(1, host_threads.get(host, 1))))
    stop = Event(stop_name)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ddcache.dask_build", str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(pickle.dumps(opts))
    proc.stdin.close()
    out_lines, err_lines = [], []
    readers = [_drain(proc.stdout, out_lines), _drain(proc.stderr, err_lines)]
    while True:
        try:
            proc.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            if stop.is_set():
                proc.kill()
    for thread in readers:
        thread.join()
    log = [line for line in err_lines if line.strip()]
    result = {"code": proc.returncode, "log": log, "host": socket.gethostname(), "seconds": time.monotonic() - start}
    if proc.returncode == 0:
        return {**json.loads(out_lines[-1]), **result}
    if proc.returncode == 2:  # a user mistake: the same on every retry
        return {**result, "out": opts.out}
    raise ShardBuildFailed(f"build of {opts.out} ended with code {proc.returncode}: "
                           + (log[-1] if log else "no message"))


def _drain(stream, lines):
    import threading

    def run():
        for raw in stream:
            lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _shard_main():
    """Subprocess entry (argv: the worker's pid): BuildOptions (pickle) on stdin -> build -> summary JSON on stdout.

    Exit code 2 with one line on stderr for a user mistake.
    """
    _die_with_parent(int(sys.argv[1]))
    from .build import build_cache

    opts = pickle.load(sys.stdin.buffer)
    try:
        summary = build_cache(opts, progress=False, echo=lambda m: print(m, file=sys.stderr, flush=True))
    except UserError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        sys.exit(2)
    print(json.dumps(summary), flush=True)


# ---------------------------------------------------------------- client side


def _distributed():
    try:
        import distributed
    except ImportError:
        raise UserError(MISSING_DASK) from None
    return distributed


class _Cluster:
    """Client of a remote scheduler, or of a LocalCluster started (and stopped) here."""

    def __init__(self, scheduler, count):
        import logging

        distributed = _distributed()
        kind, value = parse_scheduler(scheduler)
        self.cluster = None
        if kind == "local":
            from .build import available_cores

            workers = value or max(1, min(count, available_cores()))
            self.cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                    dashboard_address=":0", silence_logs=logging.ERROR)
            self.client = distributed.Client(self.cluster)
            self.where = f"a local Dask cluster of {workers} worker(s)"
        else:
            try:
                self.client = distributed.Client(value, timeout="20s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise UserError(f"--dask {value}: cannot reach the Dask scheduler ({exc})") from None
            self.where = f"Dask scheduler {value}"

    def host_threads(self):
        """Host -> Dask worker threads on it."""
        threads = {}
        for info in self.client.scheduler_info()["workers"].values():
            threads[info["host"]] = threads.get(info["host"], 0) + int(info["nthreads"])
        return threads

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def build_on_dask(opts, scheduler, count, progress=True, echo=print):
    """Build the ``count`` shards of ``opts`` as Dask tasks into the shard set ``opts.out``; returns a summary.

    The summary adds the shards' counts (``num_samples``, ``num_read``,
    ``num_skipped``, ``skipped``, ``bytes``) and lists ``shards`` (their
    directories). UserError for user mistakes, for a shard whose build failed
    after the retries, and when Dask is not installed.
    """
    from tqdm import tqdm

    from .build import check_build_options

    _distributed()
    if count < 1:
        raise UserError(f"--shards {count}: must be >= 1")
    if opts.shard != (0, 1):
        raise UserError("--dask builds every shard: drop --shard (it is for building one shard without Dask)")
    opts = dataclasses.replace(opts, source=str(Path(opts.source).resolve()), out=str(Path(opts.out).resolve()))
    check_build_options(opts)
    parent = Path(opts.out)
    todo = plan(opts, parent, count)
    summaries = {i: finished_summary(shard_options(opts, parent, i, count)) for i in range(count) if i not in todo}
    if todo:
        parent.mkdir(parents=True, exist_ok=True)
        cluster = _Cluster(scheduler, len(todo))
        distributed = _distributed()
        stop_name = f"ddcache-build-stop-{uuid.uuid4().hex}"
        stop = distributed.Event(stop_name, client=cluster.client)
        echo(f"building {len(todo)} of {count} shard(s) of {parent} on {cluster.where}")
        bar = tqdm(total=count, initial=count - len(todo), unit="shard", disable=not progress, dynamic_ncols=True,
                   desc=f"build {opts.dataset}/{opts.split}")
        host_threads = cluster.host_threads()
        futures = {}
        try:
            for i in todo:
                shard = dataclasses.replace(shard_options(opts, parent, i, count), overwrite=opts.overwrite)
                future = cluster.client.submit(build_shard, shard, host_threads, stop_name, retries=RETRIES,
                                               pure=False, key=f"ddcache-shard-{i}-of-{count}-{uuid.uuid4().hex[:8]}")
                futures[future] = i
            for future in distributed.as_completed(list(futures)):
                i = futures[future]
                try:
                    result = future.result()
                except Exception as exc:  # noqa: BLE001 - a failed shard ends the run as one line
                    raise UserError(f"shard {i}/{count} failed after {RETRIES} retries "
                                    f"({type(exc).__name__}: {exc}); re-run the same command to resume") from None
                with bar.external_write_mode():  # the bar is cleared, the lines printed, the bar redrawn
                    for line in result["log"]:
                        echo(f"shard {i}/{count}: {line}")
                if result["code"] == 2:
                    raise UserError(f"shard {i}/{count}: {result['log'][-1] if result['log'] else 'failed'}")
                summaries[i] = result
                bar.update(1)
                bar.set_postfix(samples=sum(s["num_samples"] for s in summaries.values()))
        finally:
            bar.close()
            if len(summaries) < count:  # stop what still runs (Ctrl-C or an error): it resumes on the next run
                stop.set()
            cluster.close()
    else:
        echo(f"{parent}: all {count} shard(s) already built")
    return merge_summaries(parent, [summaries[i] for i in range(count)])


def merge_summaries(parent, summaries):
    """One summary for the shard set: counts added, skip reasons merged, the shard directories listed."""
    skipped = {}
    for s in summaries:
        for reason, n in s["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    total = {k: sum(int(s[k]) for s in summaries) for k in ("num_samples", "num_read", "num_skipped", "bytes")}
    return {"out": str(parent), **total, "skipped": dict(sorted(skipped.items())),
            "shards": [s["out"] for s in summaries]}


if __name__ == "__main__":
    _shard_main()
