"""Distributed builds on Dask (``--dask local``) and shard-set directories read as one dataset.

The Dask tests start a real ``LocalCluster`` (worker processes, ~3 s) and
compare with the serial build: same records, same checksums. The worker-loss
test kills the Dask worker that runs a shard while the shard's writer is held
still, and checks that the rescheduled task resumed the shard's ``.partial``.
"""
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cache_factory import make_cache
from ddcache.build import BuildOptions, build_cache
from ddcache.resolution import Resolution
from ddcache.errors import UserError
from ddcache.manifest import read_manifest
from ddcache.shard_set import expand, shard_dir_name
from ddcache.store import CacheReader

ROOT = Path(__file__).resolve().parents[1]


def _opts(source, out, **kw):
    base = dict(dataset="fintabnet", source=str(source), split="val", out=str(out), workers=1, resolution=Resolution(72))
    base.update(kw)
    return BuildOptions(**base)


def _records_by_table(paths):
    """{table_id: raw record bytes} over the caches (or shard sets) ``paths``."""
    reader = CacheReader(paths)
    return {reader.get(i, with_image=False)["provenance"]["table_id"]: reader.get_raw(i) for i in range(len(reader))}


def _ddcache(*args):
    return subprocess.run([sys.executable, "-m", "ddcache.cli_main", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


# ---- shard sets: a parent directory of shard caches is one dataset ----

def test_shard_dir_names_sort_in_shard_order():
    assert shard_dir_name(3, 4) == "shard-3-of-4"
    names = [shard_dir_name(i, 12) for i in range(12)]
    assert names[:2] == ["shard-00-of-12", "shard-01-of-12"] and names == sorted(names)


def test_parent_directory_reads_as_its_shards_and_refuses_an_unfinished_set(tmp_path):
    from ddcache.dataflows import map_records
    from ddcache.decoding import RecordDecoder
    from ddcache.source import CacheSource
    from ddcache.summary import summarize

    parent = tmp_path / "set"
    make_cache(parent / shard_dir_name(0, 2), 3, shard=(0, 2))
    make_cache(parent / shard_dir_name(1, 2), 2, start=3, shard=(1, 2))
    assert expand([parent]) == [parent / "shard-0-of-2", parent / "shard-1-of-2"]
    assert len(CacheReader(parent)) == 5
    assert summarize([parent])["num_samples"] == 5
    df = map_records(CacheSource([parent], shuffle=False), [RecordDecoder()])
    df.reset_state()
    assert sorted(s["provenance"]["table_id"] for s in df) == [0, 1, 2, 3, 4]

    (parent / "shard-1-of-2" / "manifest.json").rename(parent / "shard-1-of-2" / "manifest.moved")
    with pytest.raises(UserError, match=r"unfinished shard set: shard\(s\) 1 of 2"):
        CacheReader(parent)
    r = _ddcache("info", parent)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"ddcache: error: {parent}: unfinished shard set: shard(s) 1 of 2 not built yet "
        "(re-run the build command to finish it)"]


# ---- the distributed build ----

def test_plan_keeps_finished_shards_and_overwrite_clears_what_is_replaced(real_source, tmp_path):
    import dataclasses

    from ddcache.dask_build import plan, shard_options

    parent = tmp_path / "set"
    opts = _opts(real_source, parent)
    build_cache(shard_options(opts, parent, 1, 2), progress=False)
    assert plan(opts, parent, 2) == [0]  # shard 1 is finished with the same options: kept
    with pytest.raises(UserError, match="holds shards of a 2-shard build; use --shards 2"):
        plan(opts, parent, 3)
    with pytest.raises(UserError, match=r"shard-1-of-2 was built with other options \(dpi\)"):
        plan(dataclasses.replace(opts, resolution=Resolution(100.0)), parent, 2)
    assert plan(dataclasses.replace(opts, overwrite=True), parent, 3) == [0, 1, 2]
    assert not (parent / "shard-1-of-2").exists()  # a shard of the replaced 2-shard set

    single = tmp_path / "single"
    build_cache(_opts(real_source, single), progress=False)
    assert plan(dataclasses.replace(opts, out=str(single), overwrite=True), single, 2) == [0, 1]
    assert not single.exists()

def test_local_dask_build_equals_the_serial_build_and_a_rerun_keeps_it(replicated_source, tmp_path):
    from ddcache.dask_build import build_on_dask

    serial = build_cache(_opts(replicated_source, tmp_path / "serial"), progress=False)
    lines = []
    # workers=0: each shard takes the cores of its machine divided by the Dask threads on it
    summary = build_on_dask(_opts(replicated_source, tmp_path / "set", workers=0), "local:2", 3, progress=False,
                            echo=lines.append)
    shards = [tmp_path / "set" / f"shard-{i}-of-3" for i in range(3)]
    assert summary["shards"] == [str(p) for p in shards]
    assert (summary["num_samples"], summary["num_read"]) == (serial["num_samples"], serial["num_read"]) == (48, 48)
    assert sorted(c for p in shards for c in read_manifest(p)["checksums"]) == \
        sorted(read_manifest(tmp_path / "serial")["checksums"])
    assert _records_by_table([tmp_path / "set"]) == _records_by_table([tmp_path / "serial"])
    for i, p in enumerate(shards):  # each shard is exactly the serial --shard i/3 build
        one = build_cache(_opts(replicated_source, tmp_path / f"one{i}", shard=(i, 3)), progress=False)
        assert read_manifest(p)["checksums"] == read_manifest(one["out"])["checksums"]

    stamp = [(p / "manifest.json").stat().st_mtime_ns for p in shards]
    again = build_on_dask(_opts(replicated_source, tmp_path / "set", workers=0), "local:2", 3, progress=False,
                          echo=lines.append)
    assert again["num_samples"] == 48 and lines[-1] == f"{tmp_path / 'set'}: all 3 shard(s) already built"
    assert [(p / "manifest.json").stat().st_mtime_ns for p in shards] == stamp  # finished shards are kept


def test_a_shard_whose_worker_is_killed_resumes_from_its_partial_on_another_attempt(replicated_source, tmp_path):
    """Kill the Dask worker running the only shard while that shard's writer is held mid-build.

    Race-free by construction: once the partial holds a quarter of the
    records, this test takes LMDB's write lock, so the build cannot commit
    (or finish) any more; then the worker is killed (its build subprocess
    dies with it), the lock released, and Dask reschedules the task.
    """
    import lmdb
    import msgpack
    import psutil

    from ddcache.dask_build import build_on_dask

    opts = dict(resolution=Resolution(150), commit_every=2)
    serial = build_cache(_opts(replicated_source, tmp_path / "serial", **opts), progress=False)
    full_size = (tmp_path / "serial" / "data.mdb").stat().st_size
    partial = tmp_path / "set" / "shard-0-of-1.partial"
    lines, outcome = [], {}

    def run():
        try:
            outcome["summary"] = build_on_dask(_opts(replicated_source, tmp_path / "set", **opts), "local:2", 1,
                                               progress=False, echo=lines.append)
        except BaseException as exc:  # reported by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    me = psutil.Process()

    def shard_builder():
        for p in me.children(recursive=True):
            try:
                if "ddcache.dask_build" in " ".join(p.cmdline()):
                    return p
            except psutil.Error:
                pass
        return None

    data = partial / "data.mdb"
    while thread.is_alive() and not (data.exists() and data.stat().st_size >= 0.25 * full_size):
        thread.join(0.002)
    assert thread.is_alive(), f"the build ended before the kill point: {outcome}"
    env = lmdb.open(str(partial), subdir=True)
    txn = env.begin(write=True)  # from here on the shard's build cannot commit
    try:
        state = msgpack.unpackb(txn.get(b"__state"), raw=False)  # ddcache.writer's bookkeeping
        assert not state["caller"]["done"] and state["writer"]["records"] > 0, state
        builder = shard_builder()
        assert builder is not None
        worker = builder.parent()
        worker.kill()
        psutil.wait_procs([worker, builder], timeout=60)
        assert not builder.is_running()
    finally:
        txn.abort()
        env.close()
    thread.join(300)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome
    resumed = [line for line in lines if line.startswith("shard 0/1: resuming")]
    assert resumed and "records written" in resumed[0], lines
    summary = outcome["summary"]
    assert (summary["num_samples"], summary["num_read"]) == (serial["num_samples"], serial["num_read"])
    assert read_manifest(tmp_path / "set" / "shard-0-of-1")["checksums"] == read_manifest(tmp_path / "serial")["checksums"]


def test_dask_user_mistakes_are_one_line(real_source, tmp_path):
    build = ["build", "fintabnet", "--source", real_source, "--split", "val", "--dpi", "72", "--quiet"]
    cases = [
        (["--out", tmp_path / "a", "--shards", "2"], "--shards needs --dask"),
        (["--out", tmp_path / "a", "--dask", "local"], "--dask needs --shards N"),
        (["--out", tmp_path / "a", "--dask", "local", "--shards", "2", "--shard", "0/2"], "drop --shard"),
        (["--out", tmp_path / "a", "--dask", "local:0", "--shards", "2"], "local:K with K >= 1"),
    ]
    single = tmp_path / "single"
    assert _ddcache(*build, "--out", single).returncode == 0
    cases.append((["--out", single, "--dask", "local", "--shards", "2"], "is a single cache; use --overwrite"))
    for args, message in cases:
        r = _ddcache(*build, *args)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1 and message in err[0], (args, r.stderr)


def test_missing_dask_is_one_line_error(real_source, tmp_path):
    code = ("import sys\n"
            "sys.modules['distributed'] = None  # as if Dask were not installed\n"
            "from ddcache.cli import run\n"
            "run()\n")
    r = subprocess.run([sys.executable, "-c", code, "build", "fintabnet", "--source", str(real_source), "--split",
                        "val", "--out", str(tmp_path / "a"), "--dask", "local", "--shards", "2"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["ddcache: error: --dask needs Dask distributed: pip install -e .[dask]  "
                                             "(or: pip install 'dask[distributed]')"]


def test_ctrl_c_stops_the_shard_builds_on_a_cluster_that_keeps_running(replicated_source, tmp_path):
    """On a cluster that outlives the client, Ctrl-C must stop the running shard build (no stray writer).

    The shard's writer is held still by this test's LMDB write lock, so the
    build is certainly running (and cannot finish) when Ctrl-C arrives.
    """
    import logging
    import os
    import signal

    import lmdb
    import psutil
    from distributed import LocalCluster

    from ddcache.dask_build import build_on_dask

    partial = tmp_path / "set" / "shard-0-of-1.partial"
    partial.mkdir(parents=True)
    env = lmdb.open(str(partial), subdir=True)
    txn = env.begin(write=True)
    me = psutil.Process()

    def builders():
        found = []
        for p in me.children(recursive=True):
            try:
                if "ddcache.dask_build" in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:
                pass
        return found

    def interrupt_once_building():
        while not builders():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster:
        trigger = threading.Thread(target=interrupt_once_building, daemon=True)
        trigger.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                build_on_dask(_opts(replicated_source, tmp_path / "set"), cluster.scheduler_address, 1,
                              progress=False, echo=lambda m: None)
            running = builders()
            gone, alive = psutil.wait_procs(running, timeout=60)
            assert not alive, "the shard build kept running after Ctrl-C"
            assert cluster.workers and all(w.process.is_alive() for w in cluster.workers.values())
        finally:
            txn.abort()
            env.close()
    assert not (tmp_path / "set" / "shard-0-of-1").exists()
