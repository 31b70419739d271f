"""The cache writer owns the format: resume from the last commit, manifest + skip report at finish, a finished
data.mdb holding records only, a crash inside finish completed by the next run, other options refused."""
import json

import lmdb
import pytest

from cache_factory import make_cache, make_sample
from ddcache.codec import checksum, encode_record
from ddcache.errors import UserError
from ddcache.manifest import read_manifest, record_key
from ddcache.store import CacheReader
from ddcache.writer import CacheHeader, CacheWriter, Skip

HEADER = CacheHeader("fintabnet", "train", "table", {"encoding": "png", "pad": 0.0}, None)


def _records(n, start=0):
    return [encode_record(make_sample(i, 2, 3)) for i in range(start, start + n)]


def lmdb_keys(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [k.decode() for k, _ in txn.cursor()]
    finally:
        env.close()


def test_resume_continues_from_the_last_commit_and_finish_publishes(tmp_path):
    out = tmp_path / "c"
    records = _records(5)
    with CacheWriter.open(out, HEADER) as w:
        assert not w.resumed
        for raw in records[:3]:
            w.append(raw, (2, 3, 6))
        w.skip(Skip("bad_box", "a.jsonl", 4, "cell 2"))
        w.commit({"tasks": 4})
        w.append(records[3], (2, 3, 6))  # never committed: lost with the "crash" below
    assert not out.exists() and (tmp_path / "c.partial").is_dir()
    with pytest.raises(UserError, match="unfinished build"):
        CacheReader(tmp_path / "c.partial")
    with CacheWriter.open(out, HEADER) as w:
        assert w.resumed and w.state == {"tasks": 4}
        assert (w.num_records, w.skipped) == (3, {"bad_box": 1})
        for raw in records[3:]:
            w.append(raw, (2, 3, 6))
        manifest = w.finish({"num_read": 6}, encoding="png")
    assert not (tmp_path / "c.partial").exists()
    m = read_manifest(out)
    assert m == manifest
    assert m["checksums"] == [checksum(r) for r in records]
    assert m["counts"] == {"num_read": 6, "num_samples": 5, "bytes": sum(map(len, records)), "num_skipped": 1,
                           "skipped": {"bad_box": 1}}
    assert m["index"]["num_cells"] == [6] * 5 and m["encoding"] == "png" and m["build_options"] == HEADER.build_options
    assert [json.loads(l) for l in (out / "skipped.jsonl").read_text().splitlines()] == [
        {"reason": "bad_box", "file": "a.jsonl", "line_no": 4, "detail": "cell 2"}]
    assert [CacheReader(out).get_raw(i) for i in range(5)] == records


def test_a_finished_cache_holds_records_only(tmp_path, real_source):
    """README: data.mdb holds records under 00000000, 00000001, ... -- no bookkeeping keys left behind."""
    from ddcache.build import BuildOptions, build_cache
    from ddcache.resolution import Resolution

    built = tmp_path / "built"
    s = build_cache(BuildOptions(dataset="fintabnet", source=str(real_source), split="val", out=str(built), workers=1,
                                 resolution=Resolution(72), commit_every=1), progress=False)
    assert lmdb_keys(built) == [record_key(i) for i in range(s["num_samples"])] and s["num_samples"] == 4
    made = make_cache(tmp_path / "made", 7)
    assert lmdb_keys(made) == [record_key(i) for i in range(7)]


def test_a_crash_inside_finish_is_completed_by_the_next_run(tmp_path, monkeypatch):
    out = tmp_path / "c"
    records = _records(3)
    w = CacheWriter.open(out, HEADER)
    for raw in records:
        w.append(raw, (2, 3, 6))
    monkeypatch.setattr(CacheWriter, "_drop_bookkeeping", lambda self: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        w.finish({"num_read": 3})
    w.close()
    monkeypatch.undo()
    assert (tmp_path / "c.partial" / "manifest.json").is_file() and not out.exists()
    first = json.loads((tmp_path / "c.partial" / "manifest.json").read_text())
    other = CacheHeader("fintabnet", "train", "table", {"encoding": "jpeg", "pad": 0.0}, None)
    with pytest.raises(UserError, match=r"other options \(encoding\)"):
        CacheWriter.open(out, other)
    w = CacheWriter.open(out, HEADER)
    assert w.complete and w.resumed
    assert w.finish({"ignored": 1}) == first  # the manifest already written is published as it is
    assert read_manifest(out) == first and lmdb_keys(out) == [record_key(i) for i in range(3)]


def test_other_options_are_refused_or_discarded_and_out_is_never_clobbered(tmp_path):
    out = tmp_path / "c"
    with CacheWriter.open(out, HEADER) as w:
        w.append(_records(1)[0], (2, 3, 6))
        w.commit()
    other = CacheHeader("fintabnet", "val", "table", {"encoding": "png", "pad": 2.0}, None)
    with pytest.raises(UserError, match=r"other options \(pad, split\)"):
        CacheWriter.open(out, other)
    with CacheWriter.open(out, other, overwrite=True) as w:  # the unfinished build is discarded
        assert not w.resumed and w.num_records == 0
        w.append(_records(1)[0], (2, 3, 6))
        w.finish()
    with pytest.raises(UserError, match="already exists"):
        CacheWriter.open(out, other)
    with CacheWriter.open(out, HEADER, overwrite=True) as w:
        for raw in _records(2):
            w.append(raw, (2, 3, 6))
        w.finish()
    assert read_manifest(out)["counts"]["num_samples"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no .partial or .old left behind


def test_a_finished_data_mdb_covers_every_page_lmdb_allocated(tmp_path):
    """Deleting the bookkeeping can leave data.mdb a page shorter than LMDB's last_pgno (a page taken and freed
    again in the transaction is never written); readers would call such a cache truncated. Seen with these sizes."""
    records = [bytes([i % 251]) * 20_000 for i in range(69)]
    with CacheWriter.open(tmp_path / "c", HEADER) as w:
        for k, raw in enumerate(records):
            w.append(raw, (1, 1, 1))
            if w.uncommitted == 32:
                w.commit({"k": k})
        w.finish()
    env = lmdb.open(str(tmp_path / "c"), readonly=True, lock=False)
    try:
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()
    assert (tmp_path / "c" / "data.mdb").stat().st_size >= needed
    assert CacheReader(tmp_path / "c").get_raw(68) == records[68]  # not refused as truncated


def test_a_partial_build_of_another_version_is_refused_or_discarded(tmp_path):
    from ddcache.store import LmdbWriter

    old = LmdbWriter(tmp_path / "c.partial")  # the bookkeeping of an older ddcache: no __header
    old.commit([("00000000", b"x")], {"options": {"encoding": "png"}, "progress": {"tasks": 1}})
    old.close()
    with pytest.raises(UserError, match="unfinished build of another ddcache version"):
        CacheWriter.open(tmp_path / "c", HEADER)
    with CacheWriter.open(tmp_path / "c", HEADER, overwrite=True) as w:
        assert not w.resumed and w.num_records == 0
        w.append(_records(1)[0], (2, 3, 6))
        w.finish()
    assert lmdb_keys(tmp_path / "c") == ["00000000"] and read_manifest(tmp_path / "c")["counts"]["num_samples"] == 1
