"""Streaming DataFlows: exactly-once epochs over ranks x workers, determinism, fork safety, corrupt records,
shard lists, read-time selection, and composition with tensorpack's multi-process runners."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before tensorpack imports TensorFlow)
from cache_factory import corrupt_record, default_cols, default_rows, make_cache
from child_run import run_until_marker
from ddcache import categories as C
from ddcache.dataflow import (CacheDataFlow, EpochRunner, ShardedCacheDataFlow, WorkerDiedError, decode_sample,
                              parallel_decode, streaming_dataflow)
from ddcache.errors import CorruptRecordError, UserError

N = 23


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("df") / "cache", N)


def _keys(df):
    return [s["key"] for s in df]


def _indices(df):
    return [s["index"] for s in df]


def test_rank_worker_partitions_cover_each_sample_once_in_real_processes(cache):
    """R=2 ranks x W=2 reader processes: per epoch the union is everything, no duplicates."""
    runners = [streaming_dataflow(cache, rank=r, world=2, num_workers=2, seed=3) for r in range(2)]
    for df in runners:
        df.reset_state()
    try:
        epochs = []
        for _ in range(2):
            per_rank = [_indices(df) for df in runners]
            assert [len(x) for x in per_rank] == [len(df) for df in runners]
            seen = per_rank[0] + per_rank[1]
            assert sorted(seen) == list(range(N))
            epochs.append(per_rank)
        # both ranks' pids are distinct reader processes (the work really ran in workers)
        assert len({pid for df in runners for pid in df.pids}) == 4
        assert epochs[0] != epochs[1]  # a new order every epoch
    finally:
        for df in runners:
            df.close()


def test_exactly_once_inside_tensorpack_multiprocess_runner(cache):
    """Copies forked by MultiProcessRunnerZMQ claim worker ids 0..W-1; each epoch is covered exactly once."""
    from tensorpack.dataflow import MultiProcessRunnerZMQ

    seen_epoch0 = []
    for rank in range(2):
        ds = ShardedCacheDataFlow(cache, rank=rank, world=2, num_workers=2, shuffle=True, seed=4)
        runner = MultiProcessRunnerZMQ(ds, num_proc=2, hwm=4)
        runner.reset_state()
        try:
            got = []
            stream = iter(runner)
            # workers advance their own epochs; read until epoch 0 of this rank is complete
            # (bounded in time: a lost sample must fail the assertion below, not hang the test)
            deadline = time.monotonic() + 60
            while sum(1 for s in got if s["epoch"] == 0) < len(ds) and time.monotonic() < deadline:
                try:
                    got.append(next(stream))
                except StopIteration:
                    stream = iter(runner)
            epoch0 = [s["index"] for s in got if s["epoch"] == 0]
            assert len(epoch0) == len(set(epoch0)) == len(ds)
            seen_epoch0 += epoch0
        finally:
            for p in runner._procs:
                p.terminate()
                p.join(5)
    assert sorted(seen_epoch0) == list(range(N))


def test_more_processes_than_workers_is_an_error(cache):
    ds = ShardedCacheDataFlow(cache, num_workers=2)
    assert [ds._claim(), ds._claim()] == [0, 1]
    with pytest.raises(RuntimeError, match="more worker processes"):
        ds._claim()


def test_in_process_rank_share_and_len(cache):
    shares = []
    for rank in range(3):
        ds = ShardedCacheDataFlow(cache, rank=rank, world=3, num_workers=2, shuffle=True, seed=1)
        ds.reset_state()
        got = _indices(ds)
        assert len(got) == len(ds)
        shares += got
    assert sorted(shares) == list(range(N))


def test_same_seed_same_stream_new_epoch_new_order(cache):
    a = streaming_dataflow(cache, seed=11)
    b = streaming_dataflow(cache, seed=11)
    c = streaming_dataflow(cache, seed=12)
    for df in (a, b, c):
        df.reset_state()
    a0, a1 = _keys(a), _keys(a)
    assert a0 == _keys(b) and a1 == _keys(b)
    assert sorted(a0) == sorted(a1) and a0 != a1
    assert _keys(c) != a0
    a.set_epoch(0)
    assert _keys(a) == a0  # resuming at an epoch replays it exactly


def test_unshuffled_reads_in_key_order_and_random_access(cache):
    df = CacheDataFlow(cache)
    df.reset_state()
    samples = list(df)
    assert [s["index"] for s in samples] == list(range(N))
    s = samples[5]
    assert s["key"] == "00000005" and s["image"].dtype == np.uint8 and s["image"].shape[2] == 3
    assert s["image"][0, 0, 0] == 5 and s["provenance"]["table_id"] == 5
    assert s["boxes"].dtype == np.float32 and s["boxes"].shape == (len(s["category_ids"]), 4)
    assert df.read(17)["provenance"]["table_id"] == 17


def test_two_dataflows_on_one_cache_in_one_process(cache):
    a, b = CacheDataFlow(cache), CacheDataFlow(cache, shuffle=True, seed=2)
    a.reset_state()
    b.reset_state()
    pairs = list(zip(a, b))  # interleaved reads through the one env of this process
    assert len(pairs) == N
    assert sorted(y["index"] for _, y in pairs) == list(range(N))


def test_reader_remaps_after_remap_bytes_and_reads_the_same(cache, monkeypatch):
    """Pages stay mapped (and in RSS) while an env is open; the reader closes and reopens it every REMAP_BYTES."""
    from ddcache import store

    expected = [store.CacheReader(cache).get_raw(i) for i in range(12)]
    opened = []
    real_open = store.lmdb.open
    monkeypatch.setattr(store.lmdb, "open", lambda *a, **kw: opened.append(a[0]) or real_open(*a, **kw))
    monkeypatch.setattr(store, "REMAP_BYTES", 2 * max(len(r) for r in expected))  # a reopen every 2-3 records
    reader = store.CacheReader(cache)
    for entry in store._READ_ENVS.values():  # start from no open env
        entry[1].close()
    store._READ_ENVS.clear()
    got = [reader.get_raw(i) for i in range(12)]
    assert got == expected
    assert 4 <= len(opened) <= 7, opened


def test_dataflow_used_in_parent_then_in_forked_workers(cache):
    ds = ShardedCacheDataFlow(cache, num_workers=2, shuffle=True, seed=5)
    ds.reset_state()
    assert len(_keys(ds)) == N  # parent opened LMDB and read everything
    runner = EpochRunner(ds)
    runner.reset_state()  # forks: the children must drop the inherited env and open their own
    try:
        assert sorted(_indices(runner)) == list(range(N))
    finally:
        runner.close()
    assert len(_keys(ds)) == N  # and the parent's env still works


@pytest.mark.parametrize("slot_mb", [8, 0.0001])  # images through shared slots / too big for a slot: the pipe
def test_worker_images_arrive_intact(cache, slot_mb):
    ref = CacheDataFlow(cache)
    ref.reset_state()
    expected = {s["index"]: s for s in ref}
    runner = EpochRunner(ShardedCacheDataFlow(cache, num_workers=2, shuffle=True, seed=9), num_slots=2, slot_mb=slot_mb)
    runner.reset_state()
    try:
        got = list(runner)
    finally:
        runner.close()
    assert len(got) == N
    for s in got:
        assert np.array_equal(s["image"], expected[s["index"]]["image"])
        assert np.array_equal(s["boxes"], expected[s["index"]]["boxes"])


@pytest.mark.parametrize("close_it", [True, False], ids=["abandoned", "still-held"])
def test_a_started_epoch_does_not_leak_into_the_next(cache, close_it):
    """An epoch stopped after one sample (iterator closed, or still held) is aborted, never mixed into the next."""
    df = streaming_dataflow(cache, num_workers=2, seed=6)
    df.reset_state()
    try:
        it = iter(df)
        next(it)
        if close_it:
            it.close()
        assert sorted(_indices(df)) == list(range(N))
        assert sorted(_indices(df)) == list(range(N))
    finally:
        df.close()


def test_shard_list_reads_as_one_dataset(tmp_path):
    a = make_cache(tmp_path / "a", 10, start=0, shard=(0, 2))
    b = make_cache(tmp_path / "b", 7, start=10, shard=(1, 2))
    df = streaming_dataflow([a, b], rank=0, world=1, num_workers=2, seed=1)
    df.reset_state()
    try:
        samples = list(df)
    finally:
        df.close()
    assert sorted(s["provenance"]["table_id"] for s in samples) == list(range(17))
    assert sorted(s["index"] for s in samples) == list(range(17))
    by_index = {s["index"]: s for s in samples}
    assert by_index[12]["key"] == "00000002"  # third record of the second shard


def test_category_selection_at_read_time(cache):
    cells = CacheDataFlow(cache, categories=["CELL"])
    items = CacheDataFlow(cache, categories=["row", "COLUMN"])
    full = CacheDataFlow(cache)
    for df in (cells, items, full):
        df.reset_state()
    for c, i, f in zip(cells, items, full):
        assert set(c["category_ids"].tolist()) == {C.CELL}
        assert set(i["category_ids"].tolist()) == {C.ROW, C.COLUMN}
        assert len(c["boxes"]) + len(i["boxes"]) == len(f["boxes"])
        assert len(c["attributes"]["row"]) == len(c["boxes"])
        assert (c["attributes"]["col_span"] == 1).all()  # attributes follow their boxes
        assert len(c["boxes"]) == f["num_rows"] * f["num_cols"]
    with pytest.raises(UserError, match="unknown category"):
        CacheDataFlow(cache, categories=["FOOTNOTE"])


def test_builder_filters_at_read_time_without_decoding(tmp_path):
    path = make_cache(tmp_path / "c", N)
    corrupt_record(path, 0)  # selection reads the manifest only: a broken record cannot matter
    df = CacheDataFlow(path, min_rows=2, max_rows=3, min_cols=2, max_cells=8, check=True)
    expected = [i for i in range(N)
                if 2 <= default_rows(i) <= 3 and default_cols(i) >= 2 and default_rows(i) * default_cols(i) <= 8]
    assert expected and df.selection.tolist() == expected
    df.reset_state()
    got = list(df)
    assert [s["index"] for s in got] == expected
    assert all(2 <= s["num_rows"] <= 3 and s["num_cols"] >= 2 for s in got)
    filters = dict(min_rows=2, max_rows=3, min_cols=2, max_cells=8)
    ranked = [streaming_dataflow(path, rank=r, world=2, **filters) for r in (0, 1)]
    for d in ranked:
        d.reset_state()
    assert sorted(_indices(ranked[0]) + _indices(ranked[1])) == expected


def test_raw_items_decode_like_the_reader(cache):
    raw = CacheDataFlow(cache, decode=False, categories=["CELL"], with_provenance=False)
    dec = CacheDataFlow(cache, categories=["CELL"], with_provenance=False)
    raw.reset_state()
    dec.reset_state()
    for item, ref in zip(raw, dec):
        assert isinstance(item["raw"], bytes)
        s = decode_sample(item)
        assert s["key"] == ref["key"] and "provenance" not in s
        assert np.array_equal(s["image"], ref["image"]) and np.array_equal(s["boxes"], ref["boxes"])


@pytest.fixture()
def corrupt_cache(tmp_path):
    path = make_cache(tmp_path / "bad", 12, encoding="png")
    return path, corrupt_record(path, 7)


def test_corrupt_record_error_names_the_key(corrupt_cache):
    path, key = corrupt_cache
    df = CacheDataFlow(path)
    df.reset_state()
    with pytest.raises(CorruptRecordError, match="checksum mismatch") as err:
        list(df)
    assert err.value.key == key == "00000007"
    unchecked = CacheDataFlow(path, check=False)  # the PNG itself no longer decodes
    unchecked.reset_state()
    with pytest.raises(CorruptRecordError) as err:
        list(unchecked)
    assert err.value.key == key


def test_corrupt_record_in_worker_raises_then_skip_counts(corrupt_cache):
    path, key = corrupt_cache
    df = streaming_dataflow(path, num_workers=2, seed=0)
    df.reset_state()
    try:
        with pytest.raises(CorruptRecordError) as err:
            list(df)
        assert err.value.key == key and "reader worker" in str(err.value)
        with pytest.raises(CorruptRecordError):  # the next epoch fails the same clear way (no hang, no dead worker)
            list(df)
    finally:
        df.close()
    skipping = streaming_dataflow(path, num_workers=2, seed=0, skip_corrupt=True)
    skipping.reset_state()
    try:
        got = _indices(skipping)
    finally:
        skipping.close()
    assert sorted(got) == [i for i in range(12) if i != 7]
    assert skipping.corrupt == [key]


_PARALLEL_DECODE = """
import sys
sys.path.insert(0, {tests!r})
import trainer
from ddcache.dataflow import parallel_decode, streaming_dataflow
from ddcache.errors import CorruptRecordError
path, key = {path!r}, {key!r}
df = parallel_decode(streaming_dataflow(path, decode=False, check=False, shuffle=False), num_proc=2)
df.reset_state()
try:
    list(df)
    sys.exit("no error raised")
except CorruptRecordError as exc:
    assert exc.key == key, exc.key
df = parallel_decode(streaming_dataflow(path, decode=False, check=False, seed=1), num_proc=2, skip_corrupt=True)
df.reset_state()
for _ in range(2):  # strict mode: each pass is exactly one epoch
    got = [s["index"] for s in df]
    assert sorted(got) == [i for i in range(12) if i != 7], got
assert df.counter.corrupt == [key, key], df.counter.corrupt
print("PARALLEL-DECODE-OK", flush=True)
"""


def test_map_workers_have_no_high_water_mark(cache):
    """A REP worker at its high-water mark silently drops a reply (libzmq #4750) and the consumer then waits forever."""
    from ddcache.dataflow import LosslessMapDataZMQ

    df = parallel_decode(streaming_dataflow(cache, decode=False), num_proc=2)
    pool = df.ds
    assert isinstance(pool, LosslessMapDataZMQ)
    worker = pool._create_worker(b"0", "ipc://@unused", 8)  # tensorpack would pass 2 * buffer_size / num_proc
    assert worker.hwm == 0


def test_parallel_decode_in_tensorpack_workers_raises_naming_the_key(corrupt_cache):
    """Decode in MultiProcessMapDataZMQ workers: the bad record surfaces in the consumer naming its key.

    Run in a child process with a time limit, so that a stall fails this test
    instead of hanging the suite. (With tensorpack's own worker high-water mark,
    about one run in three stalled on a dropped reply; see LosslessMapDataZMQ.)
    """
    path, key = corrupt_cache
    code = _PARALLEL_DECODE.format(tests=os.path.dirname(__file__), path=str(path), key=key)
    ok, out = run_until_marker(code, "PARALLEL-DECODE-OK")
    assert ok, out[-2000:]


def test_dead_worker_raises_instead_of_hanging(cache):
    df = streaming_dataflow(cache, num_workers=2)
    df.reset_state()
    try:
        os.kill(df.pids[1], signal.SIGKILL)
        with pytest.raises(WorkerDiedError, match="reader worker 1 died"):
            list(df)
    finally:
        df.close()


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_workers_die_with_a_killed_parent(cache, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        import trainer
        from ddcache.dataflow import streaming_dataflow
        from tensorpack.dataflow import MultiProcessRunnerZMQ
        from ddcache.dataflow import ShardedCacheDataFlow
        df = streaming_dataflow({str(cache)!r}, num_workers=2)
        df.reset_state()
        next(iter(df))
        # tensorpack's workers block on a full ZMQ socket and never notice the parent is gone,
        # unless the dataflow set PR_SET_PDEATHSIG in their reset_state()
        zmq_runner = MultiProcessRunnerZMQ(ShardedCacheDataFlow({str(cache)!r}, num_workers=2), num_proc=2, hwm=2)
        zmq_runner.reset_state()
        next(iter(zmq_runner))
        # LosslessMapDataZMQ map workers (parallel_decode, training) set it before their first request
        from ddcache.dataflow import parallel_decode
        decoder = parallel_decode(streaming_dataflow({str(cache)!r}, decode=False), num_proc=2)
        decoder.reset_state()
        next(iter(decoder))
        print("PIDS", *df.pids, *[p.pid for p in zmq_runner._procs], *[p.pid for p in decoder.ds._procs], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    line = [l for l in proc.stdout.splitlines() if l.startswith("PIDS ")][0]
    pids = [int(p) for p in line.split()[1:]]
    assert len(pids) == 6
    deadline = time.monotonic() + 20
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # the killed parent's workers exit asynchronously
    assert all(_gone(p) for p in pids)
