"""The read path (cache source -> map steps in workers -> consumer): exactly-once epochs over ranks x workers,
determinism, fork safety, errors as typed values (corrupt records, failing steps, dead workers), shard lists,
read-time selection."""
import multiprocessing as mp
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
from ddcache.dataflows import RecordSteps, map_records
from ddcache.decoding import RecordDecoder
from ddcache.errors import CorruptRecordError, UserError
from ddcache.map_workers import LosslessMapDataZMQ
from ddcache.selection import RecordFilter
from ddcache.source import CacheSource, CorruptRecord, EncodedRecord
from ddcache.store import CacheReader

N = 23


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("df") / "cache", N)


def _indices(df):
    return [s.index if isinstance(s, EncodedRecord) else s["index"] for s in df]


class TagProcess:
    """Map step recording which process ran it."""

    def __call__(self, sample):
        sample["pid"] = os.getpid()
        return sample


class FailOn:
    """Map step that raises (a bug, not a corrupt record) on one global index, and drops another."""

    def __init__(self, fail, drop):
        self.fail, self.drop = fail, drop

    def __call__(self, sample):
        if sample["index"] == self.fail:
            raise ZeroDivisionError("a bug in a map step")
        return None if sample["index"] == self.drop else sample


def decoded(paths, workers=0, **kw):
    stream = map_records(CacheSource(paths, **kw), [RecordDecoder()], workers=workers)
    stream.reset_state()
    return stream


def test_ranks_x_map_workers_see_each_sample_once_per_epoch_in_real_processes(cache):
    """R=2 ranks x W=2 map worker processes: per epoch the union is everything, no duplicates, a new order."""
    streams = [map_records(CacheSource(cache, rank=r, world=2, seed=3), [RecordDecoder(), TagProcess()], workers=2)
               for r in range(2)]
    for s in streams:
        s.reset_state()
    try:
        epochs = []
        for e in range(2):
            per_rank = [list(s) for s in streams]
            assert [len(x) for x in per_rank] == [len(s) for s in streams] == [12, 11]
            assert sorted(x["index"] for part in per_rank for x in part) == list(range(N))
            assert {x["epoch"] for part in per_rank for x in part} == {e}
            # the steps really ran in worker processes of the right rank, not here
            for part, s in zip(per_rank, streams):
                assert {x["pid"] for x in part} <= set(s.worker_pids) and len(s.worker_pids) == 2
            epochs.append([[x["index"] for x in part] for part in per_rank])
        assert len({pid for s in streams for pid in s.worker_pids} | {os.getpid()}) == 5
        assert sorted(epochs[0][0]) != sorted(epochs[1][0])  # a new order (and rank share) every epoch
    finally:
        for s in streams:
            s.close()


def test_rank_shares_and_len(cache):
    """Ranks' shares of an epoch are disjoint, cover everything and differ by at most one (any world)."""
    for world in (1, 3):
        sources = [CacheSource(cache, rank=r, world=world, seed=1) for r in range(world)]
        shares = []
        for s in sources:
            s.reset_state()
            got = _indices(s)
            assert len(got) == len(s)
            shares += got
        assert sorted(shares) == list(range(N))
        assert max(map(len, sources)) - min(map(len, sources)) <= 1


def test_same_seed_same_stream_new_epoch_new_order(cache):
    a, b, c = CacheSource(cache, seed=11), CacheSource(cache, seed=11), CacheSource(cache, seed=12)
    for s in (a, b, c):
        s.reset_state()
    a0, a1 = _indices(a), _indices(a)
    assert a0 == _indices(b) and a1 == _indices(b)
    assert sorted(a0) == sorted(a1) and a0 != a1
    assert _indices(c) != a0
    a.set_epoch(0)
    assert _indices(a) == a0  # resuming at an epoch replays it exactly


def test_unshuffled_decode_in_key_order_and_random_access(cache):
    samples = list(decoded(cache, shuffle=False))
    assert [s["index"] for s in samples] == list(range(N))
    s = samples[5]
    assert s["key"] == "00000005" and s["image"].dtype == np.uint8 and s["image"].shape[2] == 3
    assert s["image"][0, 0, 0] == 5 and s["provenance"]["table_id"] == 5
    assert s["boxes"].dtype == np.float32 and s["boxes"].shape == (len(s["category_ids"]), 4)
    source = CacheSource(cache)
    record = source.read(17, epoch=4)
    assert (record.key, record.index, record.epoch) == ("00000017", 17, 4)
    assert RecordDecoder()(record)["provenance"]["table_id"] == 17


def test_two_sources_on_one_cache_in_one_process(cache):
    a, b = CacheSource(cache, shuffle=False), CacheSource(cache, seed=2)
    a.reset_state()
    b.reset_state()
    pairs = list(zip(a, b))  # interleaved reads through the one env of this process
    assert len(pairs) == N
    assert sorted(y.index for _, y in pairs) == list(range(N))


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


def _read_in_child(path, conn):
    conn.send(CacheReader(path).get_raw(3))


def test_an_env_opened_before_a_fork_is_not_used_by_the_child(cache):
    reader = CacheReader(cache)
    expected = reader.get_raw(3)  # the parent's env is open now
    ours, theirs = mp.get_context("fork").Pipe()
    child = mp.get_context("fork").Process(target=_read_in_child, args=(cache, theirs))
    child.start()
    try:
        assert ours.poll(60) and ours.recv() == expected  # the child dropped the inherited env and opened its own
    finally:
        child.join(30)
    assert child.exitcode == 0 and reader.get_raw(4) is not None  # and the parent's env still works


def test_source_used_here_then_by_map_workers_then_here_again(cache):
    source = CacheSource(cache, seed=5)
    source.reset_state()
    assert sorted(_indices(source)) == list(range(N))
    stream = map_records(source, [RecordDecoder()], workers=2)
    stream.reset_state()
    try:
        assert sorted(_indices(stream)) == list(range(N))
    finally:
        stream.close()
    assert sorted(_indices(source)) == list(range(N))


def test_worker_images_arrive_intact(cache):
    expected = {s["index"]: s for s in decoded(cache)}
    stream = decoded(cache, workers=2, seed=9)
    try:
        got = list(stream)
    finally:
        stream.close()
    assert len(got) == N
    for s in got:
        assert np.array_equal(s["image"], expected[s["index"]]["image"])
        assert np.array_equal(s["boxes"], expected[s["index"]]["boxes"])


@pytest.mark.parametrize("workers", [0, 2])
def test_an_epoch_stopped_early_is_continued_never_mixed_into_the_next(cache, workers):
    stream = decoded(cache, workers=workers, seed=6)
    try:
        it = iter(stream)
        first = next(it)
        it.close()
        rest = list(stream)
        assert sorted([first["index"]] + [s["index"] for s in rest]) == list(range(N))
        assert {s["epoch"] for s in rest} == {0}
        nxt = list(stream)
        assert sorted(s["index"] for s in nxt) == list(range(N)) and {s["epoch"] for s in nxt} == {1}
    finally:
        stream.close()


def test_shard_list_reads_as_one_dataset(tmp_path):
    a = make_cache(tmp_path / "a", 10, start=0, shard=(0, 2))
    b = make_cache(tmp_path / "b", 7, start=10, shard=(1, 2))
    stream = decoded([a, b], workers=2, seed=1)
    try:
        samples = list(stream)
    finally:
        stream.close()
    assert sorted(s["provenance"]["table_id"] for s in samples) == list(range(17))
    assert sorted(s["index"] for s in samples) == list(range(17))
    by_index = {s["index"]: s for s in samples}
    assert by_index[12]["key"] == "00000002"  # third record of the second shard


def test_category_selection_at_read_time(cache):
    source = CacheSource(cache, shuffle=False)
    cells, items, full = RecordDecoder(["CELL"]), RecordDecoder(["row", "COLUMN"]), RecordDecoder()
    for record in source:
        c, i, f = cells(record), items(record), full(record)
        assert set(c["category_ids"].tolist()) == {C.CELL}
        assert set(i["category_ids"].tolist()) == {C.ROW, C.COLUMN}
        assert len(c["boxes"]) + len(i["boxes"]) == len(f["boxes"])
        assert len(c["attributes"]["row"]) == len(c["boxes"])
        assert (c["attributes"]["col_span"] == 1).all()  # attributes follow their boxes
        assert len(c["boxes"]) == f["num_rows"] * f["num_cols"]
    lean = RecordDecoder(with_attributes=False, with_provenance=False)(source.read(0))
    assert "attributes" not in lean and "provenance" not in lean
    with pytest.raises(UserError, match="unknown category"):
        RecordDecoder(["FOOTNOTE"])


def test_builder_filters_at_read_time_without_decoding(tmp_path):
    path = make_cache(tmp_path / "c", N)
    corrupt_record(path, 0)  # selection reads the manifest only: a broken record cannot matter
    f = RecordFilter(min_rows=2, max_rows=3, min_cols=2, max_cells=8)
    source = CacheSource(path, record_filter=f, shuffle=False)
    expected = [i for i in range(N)
                if 2 <= default_rows(i) <= 3 and default_cols(i) >= 2 and default_rows(i) * default_cols(i) <= 8]
    assert expected and source.selection.tolist() == expected and 0 not in expected
    got = list(decoded(path, record_filter=f, shuffle=False))
    assert [s["index"] for s in got] == expected
    assert all(2 <= s["num_rows"] <= 3 and s["num_cols"] >= 2 for s in got)
    ranked = [CacheSource(path, rank=r, world=2, record_filter=f) for r in (0, 1)]
    assert sorted(_indices(ranked[0]) + _indices(ranked[1])) == expected


def test_decoder_output_is_the_readers_sample(cache):
    source, reader = CacheSource(cache, shuffle=False), CacheReader(cache)
    for record in source:
        s, ref = RecordDecoder()(record), reader.get(record.index)
        assert s["key"] == ref["key"] and s["epoch"] == 0 and s["provenance"] == ref["provenance"]
        assert np.array_equal(s["image"], ref["image"]) and np.array_equal(s["boxes"], ref["boxes"])


@pytest.fixture()
def corrupt_cache(tmp_path):
    path = make_cache(tmp_path / "bad", 12, encoding="png")
    return path, corrupt_record(path, 7)


def test_corrupt_records_are_values_raised_naming_the_key(corrupt_cache):
    path, key = corrupt_cache
    record = CacheSource(path).read(7)
    assert isinstance(record, CorruptRecord) and record.key == key and "checksum mismatch" in record.reason
    assert RecordSteps(RecordDecoder())(record) is record  # passed through, never decoded
    with pytest.raises(CorruptRecordError, match="checksum mismatch") as err:
        list(decoded(path))
    assert err.value.key == key == "00000007"
    unchecked = CacheSource(path, check=False).read(7)  # the PNG itself no longer decodes
    assert isinstance(unchecked, EncodedRecord)
    reported = RecordSteps(RecordDecoder())(unchecked)
    assert isinstance(reported, CorruptRecord) and reported.key == key
    with pytest.raises(CorruptRecordError) as err:
        list(decoded(path, check=False))
    assert err.value.key == key


@pytest.mark.parametrize("workers", [0, 2])
def test_a_failing_step_raises_with_its_traceback_and_none_is_dropped(cache, workers):
    stream = map_records(CacheSource(cache, shuffle=False), [RecordDecoder(), FailOn(fail=9, drop=4)],
                         workers=workers)
    stream.reset_state()
    try:
        with pytest.raises(RuntimeError, match=r"(?s)record 00000009.*ZeroDivisionError: a bug in a map step"):
            list(stream)
        rest = list(stream)  # the pipeline survives: the epoch continues without the failed record
        assert 9 not in [s["index"] for s in rest] and stream.dropped == 1
    finally:
        stream.close()


_CORRUPT_IN_WORKERS = """
import sys
sys.path.insert(0, {tests!r})
import trainer
from ddcache.dataflows import map_records
from ddcache.decoding import RecordDecoder
from ddcache.errors import CorruptRecordError
from ddcache.source import CacheSource
path, key = {path!r}, {key!r}
for check in (True, False):  # a checksum mismatch found by the source, or a record the workers cannot decode
    stream = map_records(CacheSource(path, check=check, shuffle=False), [RecordDecoder()], workers=2)
    stream.reset_state()
    try:
        list(stream)
        sys.exit("no error raised")
    except CorruptRecordError as exc:
        assert exc.key == key, exc.key
    stream.close()
stream = map_records(CacheSource(path, check=False, seed=1), [RecordDecoder()], workers=2, skip_corrupt=True)
stream.reset_state()
for _ in range(2):  # strict: each pass is exactly one epoch
    got = [s["index"] for s in stream]
    assert sorted(got) == [i for i in range(12) if i != 7], got
assert stream.corrupt == [key, key], stream.corrupt
stream.close()
print("CORRUPT-IN-WORKERS-OK", flush=True)
"""


def test_corrupt_record_in_map_workers_raises_naming_the_key_then_skip_counts(corrupt_cache):
    """Run in a child process with a time limit, so that a stall fails this test instead of hanging the suite.
    (With tensorpack's own worker high-water mark, about one run in three stalled on a dropped reply.)"""
    path, key = corrupt_cache
    code = _CORRUPT_IN_WORKERS.format(tests=os.path.dirname(__file__), path=str(path), key=key)
    ok, out = run_until_marker(code, "CORRUPT-IN-WORKERS-OK")
    assert ok, out[-2000:]


def test_map_workers_have_no_high_water_mark(cache):
    """A REP worker at its high-water mark silently drops a reply (libzmq #4750) and the consumer then waits forever."""
    stream = map_records(CacheSource(cache), [RecordDecoder()], workers=2)
    assert isinstance(stream.workers, LosslessMapDataZMQ)
    worker = stream.workers._create_worker(b"0", "ipc://@unused", 8)  # tensorpack would pass 2 * buffer_size / num_proc
    assert worker.hwm == 0


_DEAD_WORKER = """
import os, signal, sys
import trainer
from ddcache.dataflows import map_records
from ddcache.decoding import RecordDecoder
from ddcache.map_workers import WorkerDiedError
from ddcache.source import CacheSource
stream = map_records(CacheSource({path!r}), [RecordDecoder()], workers=2)
stream.reset_state()
victim = stream.workers._procs[1]
os.kill(victim.pid, signal.SIGKILL)
victim.join(30)  # dead before the consumer looks: the next receive must notice, not wait forever
try:
    list(stream)
    sys.exit("no error raised")
except WorkerDiedError as exc:
    assert str(exc) == f"map worker 1 (pid {{victim.pid}}) died (killed by signal 9)", exc
stream.close()
print("DEAD-WORKER-OK", flush=True)
"""


def test_a_dead_map_worker_raises_instead_of_hanging(cache):
    ok, out = run_until_marker(_DEAD_WORKER.format(path=str(cache)), "DEAD-WORKER-OK")
    assert ok, out[-2000:]


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_map_workers_die_with_a_killed_parent(cache):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        import trainer
        from ddcache.dataflows import map_records
        from ddcache.decoding import RecordDecoder
        from ddcache.source import CacheSource
        stream = map_records(CacheSource({str(cache)!r}), [RecordDecoder()], workers=2)
        stream.reset_state()
        next(iter(stream))
        print("PIDS", *stream.worker_pids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    line = [l for l in proc.stdout.splitlines() if l.startswith("PIDS ")][0]
    pids = [int(p) for p in line.split()[1:]]
    assert len(pids) == 2
    deadline = time.monotonic() + 20
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # the killed parent's workers exit asynchronously
    assert all(_gone(p) for p in pids)


def test_messages_ship_arrays_as_frames_of_their_own():
    """pack/unpack (what map workers and their consumer send): arrays out of band, intact and writable."""
    import zmq

    from ddcache.map_workers import pack, unpack

    image = np.arange(60 * 80 * 3, dtype=np.uint8).reshape(60, 80, 3)
    message = {"image": image, "flipped": image[:, ::-1], "boxes": np.ones((3, 4), np.float32), "key": "00000001"}
    frames = pack(message)
    assert len(frames) >= 3 and frames[1].nbytes == image.nbytes  # the image's memory is a frame, not pickled
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    try:
        a.bind("inproc://pack-test")
        b.connect("inproc://pack-test")
        a.send_multipart(frames, copy=False)
        got = unpack(b.recv_multipart(copy=False))
    finally:
        a.close(0)
        b.close(0)
        context.term()
    assert got["key"] == "00000001" and np.array_equal(got["image"], image)
    assert np.array_equal(got["flipped"], image[:, ::-1]) and np.array_equal(got["boxes"], message["boxes"])
    got["image"][0, 0, 0] = 7  # consumers may draw on what they receive
