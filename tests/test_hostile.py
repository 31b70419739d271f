"""Hostile input and faults: every reader command ends with one line and exit 1/2, never a traceback, hang or crash.

Each case is one class of the attack run of issue 11, made small: caches are
two synthetic records written in the real format, with one field altered and
its checksum recomputed (as an attacker would). Commands run in this process
(fast) unless the unfixed behaviour would hang or kill the process (FIFOs,
damaged LMDB pages): those run in a child with a time limit.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

from cache_factory import make_cache, make_sample, write_records
from ddcache.codec import decode_record, encode_record
from ddcache.errors import CorruptRecordError, UserError
from ddcache.schema import MAX_IMAGE_PIXELS


# ---------------------------------------------------------------- running commands


def cli(capsys, *args):
    """Run ``ddcache ARGS`` in this process with its error policy; return (exit code, stdout, stderr)."""
    from ddcache.cli import run

    argv, sys.argv = sys.argv, ["ddcache", *map(str, args)]
    try:
        run()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


def cli_child(*args, timeout=60):
    """Run ``ddcache ARGS`` in a child process (for cases that would hang or crash it); (exit code, stderr)."""
    r = subprocess.run([sys.executable, "-m", "ddcache.cli_main", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stderr


def error_lines(err):
    """The lines of stderr that are not progress-bar output."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line
            and "img/s]" not in line and "rec/s]" not in line]


def assert_one_line(code, err, expected_code=2, match=None):
    assert "Traceback" not in err, err
    assert code == expected_code, (code, err)
    lines = error_lines(err)
    assert len(lines) == 1, lines
    if match:
        assert match in lines[0], lines[0]


def readers(capsys, cache, tmp_path):
    """Every record-reading command on ``cache``: {name: (exit code, stderr)}."""
    return {
        "verify": cli(capsys, "verify", cache, "--quiet")[::2],
        "show": cli(capsys, "show", cache, "--index", 1, "--out", tmp_path / "s.png")[::2],
        "export": cli(capsys, "export", cache, "--out", tmp_path / "export")[::2],
        "bench": cli(capsys, "bench", cache, "--workers", 0, "--epoch")[::2],
    }


# ---------------------------------------------------------------- hostile records


def _payload(i=1):
    return msgpack.unpackb(encode_record(make_sample(i, 2, 2)), raw=False)


def _cache_with_record(path, payload_or_raw):
    """A two-record cache whose record 1 is ``payload_or_raw`` (a payload map is packed), checksums recomputed."""
    good = encode_record(make_sample(0, 2, 2))
    bad = payload_or_raw if isinstance(payload_or_raw, bytes) else msgpack.packb(payload_or_raw, use_bin_type=True)
    return write_records(path, [good, bad], [(2, 2, 4), (2, 2, 4)])


def _huge_white_png(width, height):
    """A valid 1-bit grey PNG of ``width`` x ``height`` white pixels, a few KB per 10^8 pixels (zlib of zeros)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _set(path, value):
    def change(p):
        target = p
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
        return p
    return change


def _array(dtype, shape, data):
    return {"dtype": dtype, "shape": shape, "data": data}


HOSTILE_RECORDS = {
    "unknown_enc": (_set(("image", "enc"), "gif"), "image.enc"),
    "data_not_bytes": (_set(("image", "data"), "not bytes"), "image.data"),
    "shape_not_list": (_set(("image", "shape"), "26x26x3"), "image.shape"),
    "shape_negative": (_set(("image", "shape"), [-26, 26, 3]), "image.shape"),
    "shape_2d": (_set(("image", "shape"), [26, 26]), "image.shape"),
    "shape_zero": (_set(("image", "shape"), [0, 26, 3]), "image.shape"),
    "shape_lies_about_png": (_set(("image", "shape"), [20, 26, 3]), "header says"),
    "raw_bytes_short": (lambda p: {**p, "image": {"enc": "raw", "shape": [26, 26, 3], "data": b"\0" * 10}}, "raw bytes"),
    "category_out_of_range": (_set(("category_ids",), _array("int32", [8], np.array([2, 2, 2, 2, 3, 3, 4, 9], "int32").tobytes())),
                              "not ddcache categories"),
    "boxes_nan": (lambda p: {**p, "boxes": _array("float32", [8, 4], np.full((8, 4), np.nan, "float32").tobytes())}, "NaN"),
    "boxes_inf": (lambda p: {**p, "boxes": _array("float32", [8, 4], np.full((8, 4), np.inf, "float32").tobytes())}, "NaN or inf"),
    "boxes_shape_minus_one": (lambda p: {**p, "boxes": {**p["boxes"], "shape": [-1, 4]}}, "boxes.shape"),
    "boxes_bytes_lie": (lambda p: {**p, "boxes": {**p["boxes"], "shape": [800000, 4]}}, "bytes for float32"),
    "attribute_length": (_set(("attributes", "row"), _array("int32", [1], b"\0\0\0\0")), "attributes.row"),
    "provenance_not_map": (_set(("provenance",), ["a", "list"]), "provenance"),
    "provenance_huge_string": (_set(("provenance", "source_file"), "x" * 100_000), "characters long"),
    "provenance_nested": (_set(("provenance", "table_id"), {"deep": {"deeper": [1]}}), "provenance.table_id"),
    "provenance_nan": (_set(("provenance", "scale"), float("nan")), "finite"),
    "msgpack_ext_type": (_set(("provenance", "table_id"), msgpack.ExtType(42, b"x")), "extension type"),
    "num_rows_negative": (_set(("num_rows",), -3), "num_rows"),
    "not_a_map": (lambda p: [1, 2, 3], "record is a list"),
    "wrong_version": (_set(("v",), 99), "wrong version"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_RECORDS))
def test_hostile_record_is_one_corrupt_record_error(case, tmp_path):
    change, message = HOSTILE_RECORDS[case]
    raw = msgpack.packb(change(_payload()), use_bin_type=True)
    with pytest.raises(CorruptRecordError, match=r"'00000001'") as info:
        decode_record("00000001", raw)
    assert message in info.value.reason
    with pytest.raises(CorruptRecordError):
        decode_record("00000001", raw, with_image=False)  # export / filters decode no pixels: still refused


@pytest.mark.parametrize("raw", [
    b"\x91" * 5000 + b"\xc0",                      # deeply nested msgpack
    encode_record(make_sample(1, 2, 2))[:-7],       # truncated
    b"\xc1",                                        # a byte msgpack never uses
])
def test_undecodable_bytes_are_corrupt_records(raw):
    with pytest.raises(CorruptRecordError, match="00000001"):
        decode_record("00000001", raw)


def test_readers_give_one_line_for_a_hostile_record(tmp_path, capsys):
    """One representative record per reader command (the schema cases above are shared by every command)."""
    cache = _cache_with_record(tmp_path / "c", HOSTILE_RECORDS["boxes_nan"][0](_payload()))
    results = readers(capsys, cache, tmp_path)
    code, err = results.pop("verify")
    assert code == 1 and "00000001" in err and "NaN" in err and "00000000" not in err and "Traceback" not in err
    for name, (code, err) in results.items():
        assert_one_line(code, err, 2, "corrupt record '00000001'")


def test_export_never_writes_nan(tmp_path, capsys):
    cache = _cache_with_record(tmp_path / "c", HOSTILE_RECORDS["boxes_nan"][0](_payload()))
    cli(capsys, "export", cache, "--out", tmp_path / "e")
    assert not (tmp_path / "e" / "instances.json").exists()
    from ddcache.coco import CocoBuilder

    sample = make_sample(0, 1, 1)
    sample["boxes"] = np.full((3, 4), np.nan, np.float32)
    builder = CocoBuilder()
    builder.add(sample, "x.png")
    with pytest.raises(ValueError):
        builder.write(tmp_path / "nan.json")  # the writer itself refuses NaN: JSON has no NaN


def test_huge_png_is_refused_before_decoding(tmp_path, capsys):
    """A few KB declaring 30000 x 30000 pixels (2.7 GB decoded) is refused from its header, lying shape or not."""
    png = _huge_white_png(30000, 30000)
    assert len(png) < 300_000
    for shape, message in (([30000, 30000, 3], "more than the limit"), ([26, 26, 3], "header says 30000x30000")):
        payload = _payload()
        payload["image"] = {"enc": "png", "shape": shape, "data": png}
        cache = _cache_with_record(tmp_path / f"c{shape[0]}", payload)
        code, _, err = cli(capsys, "show", cache, "--index", 1, "--out", tmp_path / "s.png")
        assert_one_line(code, err, 2, message)
    assert 30000 * 30000 > MAX_IMAGE_PIXELS


def test_verify_checks_content_and_index_not_only_checksums(tmp_path, capsys):
    cache = _cache_with_record(tmp_path / "c", HOSTILE_RECORDS["category_out_of_range"][0](_payload()))
    code, out, err = cli(capsys, "verify", cache, "--quiet")
    assert code == 1 and "00000001" in err and "categories" in err
    lying_index = write_records(tmp_path / "i", [encode_record(make_sample(0, 2, 2))], [(2, 2, 99)])
    code, out, err = cli(capsys, "verify", lying_index, "--quiet")
    assert code == 1 and "00000000" in err and "manifest index" in err


# ---------------------------------------------------------------- hostile manifests


def _edit_manifest(cache, change):
    path = cache / "manifest.json"
    m = json.loads(path.read_text())
    result = change(m)
    path.write_text(result if isinstance(result, str) else json.dumps(m if result is None else result))


def _counts(**kv):
    return lambda m: m["counts"].update(kv)


HOSTILE_MANIFESTS = {
    "a_list": (lambda m: [m], "not a ddcache manifest"),
    "a_string": (lambda m: json.dumps("ddcache"), "not a ddcache manifest"),
    "deeply_nested": (lambda m: "[" * 100_000 + "]" * 100_000, "unreadable manifest"),
    "not_json": (lambda m: "{", "unreadable manifest"),
    "counts_missing": (lambda m: m.pop("counts") and None, "has no counts"),
    "counts_a_list": (lambda m: m.update(counts=[1]), "counts is a list"),
    "bytes_nan": (lambda m: json.dumps(m).replace('"bytes": ', '"bytes": NaN, "x": '), "NaN is not a JSON number"),
    "bytes_inf": (lambda m: json.dumps(m).replace('"bytes": ', '"bytes": 1e999, "x": '), "out of range"),
    "num_samples_float": (_counts(num_samples=2.0), "expected an integer"),
    "num_samples_negative": (_counts(num_samples=-1), "outside"),
    "num_samples_string": (_counts(num_samples="2"), "expected an integer"),
    "num_samples_1e15": (_counts(num_samples=10 ** 15), "outside"),
    "num_samples_more_than_checksums": (_counts(num_samples=3), "checksums has 2 items, expected 3"),
    "checksums_short": (lambda m: m["checksums"].pop() and None, "checksums has 1 items"),
    "checksum_not_string": (lambda m: m["checksums"].__setitem__(0, 5), "checksums"),
    "index_column_wrong": (lambda m: m["index"].update(num_rows=["x", 1]), "index.num_rows"),
    "index_missing": (lambda m: m.pop("index") and None, "has no index"),
    "skipped_not_map": (_counts(skipped=[1]), "counts.skipped"),
    "mode_unknown": (lambda m: m.update(mode="video"), "mode"),
    "categories_other_ids": (lambda m: m.update(categories={"CELL": 7}), "categories"),
    "schema_version_string": (lambda m: m.update(schema_version="1"), "schema_version"),
    "schema_version_other": (lambda m: m.update(schema_version=2), "rebuild the cache"),
    "shard_bad": (lambda m: m.update(shard=[3, 2]), "shard"),
}


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("good") / "c", 2)


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_hostile_manifest_is_one_line_for_every_reader(case, good_cache, tmp_path, capsys):
    cache = tmp_path / "c"
    shutil.copytree(good_cache, cache)
    change, message = HOSTILE_MANIFESTS[case]
    _edit_manifest(cache, change)
    for args in (("info", cache), ("verify", cache, "--quiet"), ("show", cache, "--out", tmp_path / "s.png"),
                 ("export", cache, "--out", tmp_path / "e"), ("bench", cache, "--workers", 0, "--epoch")):
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, 2, message)


def test_oversized_manifest_is_refused_before_reading(good_cache, tmp_path, capsys, monkeypatch):
    from ddcache import manifest

    cache = tmp_path / "c"
    shutil.copytree(good_cache, cache)
    monkeypatch.setattr(manifest, "MAX_MANIFEST_BYTES", 100)
    code, _, err = cli(capsys, "info", cache)
    assert_one_line(code, err, 2, "more than the limit")


# ---------------------------------------------------------------- hostile files and paths


def test_symlink_loop_and_file_as_cache_path(tmp_path, capsys):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    (tmp_path / "file").write_text("x")
    for path, message in ((loop, "cannot open"), (tmp_path / "file", "not a directory")):
        for args in (("info", path), ("verify", path), ("show", path, "--out", tmp_path / "s.png"),
                     ("export", path, "--out", tmp_path / "e"), ("bench", path, "--epoch")):
            code, _, err = cli(capsys, *args)
            assert_one_line(code, err, 2, message)


@pytest.mark.parametrize("name", ["manifest.json", "data.mdb"])
def test_fifo_in_a_cache_is_refused_not_waited_on(name, good_cache, tmp_path):
    cache = tmp_path / "c"
    shutil.copytree(good_cache, cache)
    os.remove(cache / name)
    os.mkfifo(cache / name)
    for args in (("verify", cache, "--quiet"), ("show", cache, "--out", tmp_path / "s.png")):
        code, err = cli_child(*args)
        assert "Traceback" not in err and "not a regular file (a FIFO)" in err, err
        assert code in (1, 2) and len(error_lines(err)) <= 2


def test_device_as_data_mdb_is_refused(good_cache, tmp_path, capsys):
    cache = tmp_path / "c"
    shutil.copytree(good_cache, cache)
    os.remove(cache / "data.mdb")
    os.symlink("/dev/zero", cache / "data.mdb")
    code, _, err = cli(capsys, "show", cache, "--out", tmp_path / "s.png")
    assert_one_line(code, err, 2, "not a regular file (a character device)")


# ---------------------------------------------------------------- damaged LMDB files


def _pages(cache):
    """(page number, flags, lower, upper) of the branch / leaf pages reachable from the root, root first.

    Followed from the meta page LMDB uses (the higher txnid): a finished cache also holds freed pages
    (its bookkeeping keys were deleted) that no reader ever touches.
    """
    data = (cache / "data.mdb").read_bytes()
    metas = [struct.unpack_from("<QQ", data, m * 4096 + 128) + struct.unpack_from("<Q", data, m * 4096 + 144)
             for m in (0, 1)]
    root = metas[1][0] if metas[0][2] < metas[1][2] else metas[0][0]
    out, todo = [], [root]
    while todo:
        p = todo.pop(0)
        pgno, _, flags, lower, upper = struct.unpack_from("<QHHHH", data, p * 4096)
        out.append((p, flags, lower, upper))
        if flags == 1:
            for i in range((lower - 16) // 2):
                ptr = struct.unpack_from("<H", data, p * 4096 + 16 + 2 * i)[0]
                lo, hi, fl = struct.unpack_from("<HHH", data, p * 4096 + ptr)
                todo.append(lo | hi << 16 | fl << 32)
    return out


@pytest.fixture(scope="module")
def deep_cache(tmp_path_factory):
    """A cache whose tree has a branch root (20 small inline records) and one with overflow records."""
    root = tmp_path_factory.mktemp("deep")
    return make_cache(root / "inline", 20), make_cache(root / "overflow", 12, encoding="raw", cell_px=30)


def _flip(cache, offset, bit):
    with open(cache / "data.mdb", "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def _crash_cases(deep_cache):
    """Bit flips known to crash LMDB itself (SIGBUS / SIGABRT) when it reads the unchecked file."""
    inline, overflow = deep_cache
    root = next(p for p, flags, _, _ in _pages(inline) if flags == 1)
    leaf = next(p for p, flags, _, _ in _pages(overflow) if flags == 2)
    return {
        "branch_numkeys": (inline, root * 4096 + 13, 2),   # lower += 1024: node offsets past the file (SIGBUS)
        "branch_node_offset": (inline, root * 4096 + 23, 4),  # a node read from the middle of another (SIGABRT)
        "leaf_overflow_size": (overflow, leaf * 4096 + struct.unpack_from("<H", (overflow / "data.mdb").read_bytes(),
                                                                           leaf * 4096 + 16)[0] + 2, 6),
    }


@pytest.mark.parametrize("case", ["branch_numkeys", "branch_node_offset", "leaf_overflow_size"])
def test_damaged_lmdb_page_is_one_line_not_a_crash(case, deep_cache, tmp_path):
    source, offset, bit = _crash_cases(deep_cache)[case]
    cache = tmp_path / "c"
    shutil.copytree(source, cache)
    _flip(cache, offset, bit)
    code, err = cli_child("verify", cache, "--quiet")
    assert code == 1 and "Traceback" not in err and "data.mdb" in err, (code, err)
    code, err = cli_child("show", cache, "--index", 0, "--out", tmp_path / "s.png")
    assert code == 2 and "Traceback" not in err and len(error_lines(err)) == 1, (code, err)


def test_lmdb_fuzz_never_crashes_a_reader(deep_cache, tmp_path):
    """Every bit of the branch root's header, node offsets and node headers: a reader errors or reads, never dies.

    Without the structural check (``store.check_lmdb_file``, ``ddcache/lmdb_file.py``) 13 of these ~850 flips
    kill the reader inside LMDB (SIGBUS / SIGABRT).
    """
    inline, _ = deep_cache
    data = (inline / "data.mdb").read_bytes()
    pages = _pages(inline)
    offsets = []
    for p, _, lower, _ in [next(pg for pg in pages if pg[1] == 1)]:
        offsets += [p * 4096 + o for o in range(lower)]
        for i in range((lower - 16) // 2):
            ptr = struct.unpack_from("<H", data, p * 4096 + 16 + 2 * i)[0]
            offsets += [p * 4096 + ptr + o for o in range(8)]
    work = tmp_path / "w"
    work.mkdir()
    code = (
        "import os, sys, lmdb\n"
        "from ddcache.errors import UserError\n"
        "from ddcache.store import check_lmdb_file\n"
        f"data = open({str(inline / 'data.mdb')!r}, 'rb').read(); work = {str(work)!r}\n"
        f"died = []\n"
        f"for off in {sorted(set(offsets))!r}:\n"
        "    for bit in range(8):\n"
        "        d = bytearray(data); d[off] ^= 1 << bit\n"
        "        open(work + '/data.mdb', 'wb').write(d)\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)\n"
        "            try:\n"
        "                check_lmdb_file(work)\n"
        "                env = lmdb.open(work, readonly=True, lock=False)\n"
        "                with env.begin() as txn:\n"
        "                    [txn.get(b'%08d' % i) for i in range(21)]\n"
        "                    [kv for kv in txn.cursor()]\n"
        "            except (UserError, lmdb.Error):\n"
        "                pass\n"
        "            os._exit(0)\n"
        "        if os.waitpid(pid, 0)[1]:\n"
        "            died.append((off, bit))\n"
        "print('died', len(died), died[:5])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert "died 0 " in r.stdout, r.stdout + r.stderr


def test_truncated_but_consistent_lmdb(deep_cache, tmp_path, capsys):
    """data.mdb cut short and its meta pages rewritten to match: a page the tree needs is gone."""
    cache = tmp_path / "c"
    shutil.copytree(deep_cache[0], cache)
    data = bytearray((cache / "data.mdb").read_bytes())
    keep = max(p for p, _, _, _ in _pages(cache))  # the last page the tree needs is cut off
    for m in (0, 1):
        struct.pack_into("<Q", data, m * 4096 + 136, keep - 1)  # last_pgno
    (cache / "data.mdb").write_bytes(bytes(data[: keep * 4096]))
    code, _, err = cli(capsys, "show", cache, "--out", tmp_path / "s.png")
    assert_one_line(code, err, 2, "data.mdb")
    code, _, err = cli(capsys, "verify", cache, "--quiet")
    assert code == 1 and "Traceback" not in err and "data.mdb" in err


def test_ddtrain_cache_checks_refuse_hostile_caches(good_cache, deep_cache, tmp_path):
    """``ddtrain``'s pre-flight (``check_caches``) raises the typed one-line error for a hostile manifest or data.mdb."""
    from trainer.preflight import check_caches

    manifest = tmp_path / "m"
    shutil.copytree(good_cache, manifest)
    _edit_manifest(manifest, _counts(num_samples=10 ** 15))
    damaged = tmp_path / "d"
    shutil.copytree(deep_cache[0], damaged)
    source, offset, bit = _crash_cases(deep_cache)["branch_numkeys"]
    _flip(damaged, offset, bit)
    for cache, message in ((manifest, "num_samples"), (damaged, "damaged LMDB file")):
        with pytest.raises(UserError, match=message):
            check_caches([cache], "train", ["CELL"])


# ---------------------------------------------------------------- hostile raw input to the builder


def _build(source, out, **kw):
    from ddcache.build import BuildOptions, build_cache

    from ddcache.resolution import Resolution

    base = dict(dataset="fintabnet", source=str(source), split="val", out=str(out), workers=1, resolution=Resolution(72))
    if "dpi" in kw:
        base["resolution"] = Resolution(kw.pop("dpi"))
    base.update(kw)
    return build_cache(BuildOptions(**base), progress=False)


def _skips(cache):
    return {r["line_no"]: (r["reason"], r["detail"]) for r in map(json.loads, (cache / "skipped.jsonl").read_text().splitlines())}


@pytest.fixture()
def hostile_fintabnet(real_source, tmp_path):
    """The 4 real lines followed by one line of each malformed class; returns (source, {line_no: reason})."""
    src = tmp_path / "src"
    shutil.copytree(real_source, src)
    path = src / "FinTabNet_1.0.0_table_val.jsonl"
    good = [json.loads(line) for line in path.read_text().splitlines()]

    def variant(change):
        rec = json.loads(json.dumps(good[0]))
        change(rec)
        return json.dumps(rec)

    def tokens(rec, value):
        rec["html"]["structure"]["tokens"] = value

    def colspan(rec):
        t = rec["html"]["structure"]["tokens"]
        i = t.index("<td>")
        t[i:i + 1] = ["<td", ' colspan="1000000"', ">"]

    def long_span(rec):
        t = rec["html"]["structure"]["tokens"]
        i = t.index("<td>")
        t[i:i + 1] = ["<td", ' colspan="' + "9" * 40 + '"', ">"]

    cases = [
        ('{"html": ' + "[" * 20_000 + "]" * 20_000 + "}", "malformed_json"),          # RecursionError in json
        (variant(lambda r: r.update(filename=["a.pdf"])), "bad_field"),                  # filename a list
        (variant(lambda r: r.update(bbox=[10 ** 400, 0, 1, 1])), "bad_box"),            # float() overflows
        (variant(lambda r: r.update(bbox=["a", "b", "c", "d"])), "bad_box"),            # strings compare, then crash
        (variant(lambda r: r["html"]["cells"][0].update(bbox=[float("nan")] * 4)), "bad_box"),  # NaN into the cache
        (variant(lambda r: r["html"]["cells"][0].update(bbox=[True, 0, 1, 1])), "bad_box"),
        (variant(lambda r: tokens(r, [1, 2, 3])), "bad_structure"),                     # int structure tokens
        (variant(lambda r: r["html"]["cells"][0].update(tokens=[1, 2])), "bad_structure"),  # int cell tokens
        (variant(lambda r: r["html"].update(cells="abc")), "bad_structure"),
        (variant(lambda r: r["html"]["cells"].__setitem__(0, 5)), "bad_structure"),
        (variant(colspan), "too_large"),                                                # 10^6 slots per row
        (variant(long_span), "bad_structure"),
        (variant(lambda r: r.update(table_id={"a": [1, 2]})), "bad_field"),             # would land in provenance
        (variant(lambda r: r.update(html="x")), "missing_field"),
        (variant(lambda r: r.update(pad="y" * 300_000)), "too_large"),                   # over --max-line-bytes
    ]
    lines = [json.dumps(r) for r in good] + [line for line, _ in cases]
    path.write_text("\n".join(lines) + "\n")
    return src, {len(good) + 1 + i: reason for i, (_, reason) in enumerate(cases)}


def test_every_malformed_line_is_a_counted_skip(hostile_fintabnet, tmp_path):
    src, expected = hostile_fintabnet
    summary = _build(src, tmp_path / "c", max_line_bytes=200_000)
    assert summary["num_samples"] == 4 and summary["num_read"] == 4 + len(expected)
    got = _skips(tmp_path / "c")
    assert {n: reason for n, (reason, _) in got.items()} == expected, got


def test_page_mode_skips_hostile_lines_too(hostile_fintabnet, tmp_path):
    src, expected = hostile_fintabnet
    summary = _build(src, tmp_path / "c", mode="page", max_line_bytes=200_000)
    assert summary["num_samples"] == 4 and summary["num_read"] == 4 + len(expected)
    assert {n: reason for n, (reason, _) in _skips(tmp_path / "c").items()} == expected


def test_page_mode_holds_line_positions_not_parsed_lines(real_source):
    """Grouping by page needs the whole file before the first page; what it holds per line is a LineRef
    (20K lines: 770 MB peak RSS before, 75 MB after, with --max-datapoints 1)."""
    from ddcache.build import BuildOptions, iter_tasks
    from ddcache.datasets import get_reader
    from ddcache.datasets.base import LineRef, read_line

    opts = BuildOptions(dataset="fintabnet", source=str(real_source), split="val", mode="page", out="unused")
    tasks = list(iter_tasks(get_reader("fintabnet"), opts))
    assert len(tasks) == 4 and all(isinstance(ref, LineRef) for t in tasks for ref in t.lines)
    lines = (real_source / "FinTabNet_1.0.0_table_val.jsonl").read_text().splitlines()
    assert read_line(tasks[2].lines[0]).record == json.loads(lines[2])


def test_page_named_by_too_many_lines(real_source, tmp_path, monkeypatch):
    from ddcache import build

    src = tmp_path / "src"
    shutil.copytree(real_source, src)
    first = (src / "FinTabNet_1.0.0_table_val.jsonl").read_text().splitlines()[0]
    (src / "FinTabNet_1.0.0_table_val.jsonl").write_text("\n".join([first] * 3) + "\n")
    monkeypatch.setattr(build, "MAX_TABLES_PER_PAGE", 2)
    summary = _build(src, tmp_path / "c", mode="page")
    assert summary["num_samples"] == 1 and summary["boxes_per_category"]["TABLE"] == 2
    assert _skips(tmp_path / "c") == {3: ("too_large", "page has more than 2 tables")}


def test_huge_page_is_refused_before_rendering(real_source, tmp_path):
    """A 5000 x 5000 pt page in page mode at 72 dpi: 25M pixels, over --max-pixels 1M: too_large, nothing rendered."""
    from reportlab.pdfgen import canvas

    src = tmp_path / "src"
    shutil.copytree(real_source, src)
    rec = json.loads((src / "FinTabNet_1.0.0_table_val.jsonl").read_text().splitlines()[0])
    c = canvas.Canvas(str(src / "pdf" / rec["filename"]), pagesize=(5000, 5000))
    c.drawString(100, 100, "x")
    c.save()
    (src / "FinTabNet_1.0.0_table_val.jsonl").write_text(json.dumps(rec) + "\n")
    summary = _build(src, tmp_path / "c", mode="page", max_pixels=1_000_000)
    assert summary["num_samples"] == 0 and summary["skipped"] == {"too_large": 1}
    assert "max-pixels" in _skips(tmp_path / "c")[1][1]


def _pubtabnet_source(root, image_name):
    (root / "val").mkdir(parents=True)
    rec = {"filename": image_name, "split": "val", "imgid": 1,
           "html": {"structure": {"tokens": ["<tr>", "<td>", "</td>", "</tr>"]},
                    "cells": [{"tokens": ["a"], "bbox": [1, 1, 5, 5]}]}}
    (root / "PubTabNet_2.0.0.jsonl").write_text(json.dumps(rec) + "\n")
    return root / "val" / image_name


def test_huge_pubtabnet_image_is_refused_from_its_header(tmp_path, monkeypatch):
    from ddcache import page

    src = tmp_path / "ptn"
    _huge = _huge_white_png(30000, 30000)
    _pubtabnet_source(src, "big.png").write_bytes(_huge)

    def no_decode(*args, **kw):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(page.cv2, "imdecode", no_decode)
    monkeypatch.setattr(page.cv2, "imread", no_decode)
    summary = _build(src, tmp_path / "c", dataset="pubtabnet", dpi="auto")
    assert summary["skipped"] == {"too_large": 1}


def test_fifo_as_pubtabnet_image_is_a_skip_not_a_hang(tmp_path):
    src = tmp_path / "ptn"
    os.mkfifo(_pubtabnet_source(src, "fifo.png"))
    r = subprocess.run([sys.executable, "-m", "ddcache.cli_main", "build", "pubtabnet", "--source", str(src), "--split", "val",
                        "--out", str(tmp_path / "c"), "--workers", "1", "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _skips(tmp_path / "c")[1][0] == "corrupt_file"


# ---------------------------------------------------------------- builds never delete what ddcache did not create


def test_overwrite_refuses_a_directory_that_is_not_a_cache(real_source, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    code, _, err = cli(capsys, "build", "fintabnet", "--source", real_source, "--split", "val", "--out", mine,
                       "--overwrite", "--quiet")
    assert_one_line(code, err, 2, "not a ddcache cache")
    assert (mine / "thesis.tex").read_text() == "years of work"
    partial = tmp_path / "other.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("x")
    code, _, err = cli(capsys, "build", "fintabnet", "--source", real_source, "--split", "val",
                       "--out", tmp_path / "other", "--overwrite", "--quiet")
    assert_one_line(code, err, 2, "not an unfinished ddcache build")
    assert (partial / "notes.txt").exists()


@pytest.mark.parametrize("where", ["same", "inside", "containing"])
def test_out_may_not_overlap_the_source(where, real_source, tmp_path, capsys):
    src = tmp_path / "raw" / "fintabnet"
    shutil.copytree(real_source, src)
    out = {"same": src, "inside": src / "cache", "containing": tmp_path / "raw"}[where]
    before = sorted(p.name for p in src.rglob("*"))
    code, _, err = cli(capsys, "build", "fintabnet", "--source", src, "--split", "val", "--out", out, "--overwrite",
                       "--quiet")
    assert_one_line(code, err, 2, {"same": "same directory", "inside": "lies inside", "containing": "contains"}[where])
    assert sorted(p.name for p in src.rglob("*")) == before


def test_export_never_deletes_a_cache(good_cache, tmp_path, capsys):
    cache = tmp_path / "c"
    shutil.copytree(good_cache, cache)
    other = make_cache(tmp_path / "other", 1)
    for out, message in ((cache, "same directory"), (cache / "sub", "lies inside"), (tmp_path, "contains"),
                         (other, "not an export")):
        code, _, err = cli(capsys, "export", cache, "--out", out, "--overwrite")
        assert_one_line(code, err, 2, message)
    for c in (cache, other):
        assert cli(capsys, "verify", c, "--quiet")[0] == 0
    assert cli(capsys, "export", cache, "--out", tmp_path / "e")[0] == 0
    assert cli(capsys, "export", cache, "--out", tmp_path / "e", "--overwrite")[0] == 0  # an export may be replaced


_KILL_AFTER = """
import os, signal, sys
k, out = int(sys.argv[1]), sys.argv[2]
import ddcache.cache_dir as cache_dir
count = [0]
def counted(fn):
    def run(*args, **kw):
        result = fn(*args, **kw)
        if any(out in str(a) for a in args):
            count[0] += 1
            if count[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
        return result
    return run
for name in ("rename", "replace", "unlink", "rmdir"):
    setattr(os, name, counted(getattr(os, name)))
cache_dir._mark = counted(cache_dir._mark)
cache_dir._exchange = counted(cache_dir._exchange)
from ddcache.cli import run
sys.argv = ["ddcache", "build", *sys.argv[3:]]
run()
"""


@pytest.mark.parametrize("replace", [True, False])
def test_a_kill_at_any_filesystem_step_leaves_a_complete_cache_and_no_strays(replace, real_source, tmp_path):
    """SIGKILL right after the k-th rename / unlink / marker / swap touching OUT, for every k until the build finishes.

    After each kill OUT is absent (first build) or a complete cache (old or new); re-running the same command
    leaves exactly OUT, with the new records, and no OUT.old / .partial / .replaced / .lock.
    """
    from ddcache.build import BuildOptions, build_cache
    from ddcache.manifest import read_manifest
    from ddcache.resolution import Resolution
    from ddcache.verify import verify_cache

    out = tmp_path / "caches" / "c"
    out.parent.mkdir()
    args = ["fintabnet", "--source", str(real_source), "--split", "val", "--out", str(out), "--workers", "1",
            "--dpi", "72", "--quiet", "--overwrite"]
    k = 0
    while True:
        k += 1
        if out.exists():
            shutil.rmtree(out)
        if replace:  # an old cache (2 samples) to be replaced by the new one (4 samples)
            build_cache(BuildOptions(dataset="fintabnet", source=str(real_source), split="val", out=str(out),
                                     workers=1, resolution=Resolution(72), max_datapoints=2), progress=False)
        r = subprocess.run([sys.executable, "-c", _KILL_AFTER, str(k), str(out), *args], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode in (0, -9), r.stderr
        names = {p.name for p in out.parent.iterdir()}
        assert "c.old" not in names
        if out.exists():
            assert verify_cache(out) == []
            assert read_manifest(out)["counts"]["num_samples"] in ((2, 4) if replace else (4,))
        else:
            assert not replace, f"kill point {k}: OUT vanished"
        build_cache(BuildOptions(dataset="fintabnet", source=str(real_source), split="val", out=str(out), workers=1,
                                 resolution=Resolution(72), overwrite=True), progress=False)
        assert {p.name for p in out.parent.iterdir()} == {"c"}, (k, sorted(out.parent.iterdir()))
        assert read_manifest(out)["counts"]["num_samples"] == 4
        if r.returncode == 0:
            break
    assert k >= (8 if replace else 3)  # the loop really went through the publish steps


def test_a_second_build_to_the_same_out_is_refused(real_source, tmp_path, capsys):
    from ddcache.cache_dir import BuildLock

    out = tmp_path / "c"
    with BuildLock(out):  # a build in progress
        code, _, err = cli(capsys, "build", "fintabnet", "--source", real_source, "--split", "val", "--out", out,
                           "--quiet")
        assert_one_line(code, err, 2, "another build is writing")
        assert not (tmp_path / "c.partial").exists()
    (tmp_path / "c.lock").write_text("12345\n")  # a stale lock file left by a SIGKILLed build: no holder
    code, _, err = cli(capsys, "build", "fintabnet", "--source", real_source, "--split", "val", "--out", out, "--quiet")
    assert code == 0, err
    assert {p.name for p in tmp_path.iterdir()} == {"c"}


def test_two_concurrent_builds_one_wins_the_other_is_one_line(real_source, tmp_path):
    """Two real processes: the first holds the lock (paused inside the build), the second is refused at once."""
    out, go = tmp_path / "c", tmp_path / "go"
    pause = (
        "import sys, time, pathlib\n"
        "import ddcache.cache_dir as cd\n"
        "real = cd.prepare\n"
        "def prepare(*a, **kw):\n"
        "    print('locked', flush=True)\n"
        f"    while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
        "    return real(*a, **kw)\n"
        "cd.prepare = prepare\n"
        "import ddcache.build; ddcache.build.prepare = prepare\n"
        "from ddcache.cli import run\n"
        f"sys.argv = ['ddcache', 'build', 'fintabnet', '--source', {str(real_source)!r}, '--split', 'val', "
        f"'--out', {str(out)!r}, '--workers', '1', '--quiet']\n"
        "run()\n"
    )
    first = subprocess.Popen([sys.executable, "-c", pause], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        code, err = cli_child("build", "fintabnet", "--source", real_source, "--split", "val", "--out", out, "--quiet")
        assert code == 2 and "another build is writing" in err and "Traceback" not in err, err
        assert len(error_lines(err)) == 1
        go.write_text("")
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert {p.name for p in tmp_path.iterdir()} == {"c", "go"}


def test_full_disk_is_one_line_and_the_build_resumes(replicated_source, tmp_path):
    """A 600 KB tmpfs (private mount namespace): the build stops with the no-space line; with room it resumes."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user + mount namespaces are not available here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    build = (f"{sys.executable} -m ddcache.cli_main build fintabnet --source {replicated_source} --split val "
             f"--out {mnt}/c --workers 1 --dpi 72 --quiet")
    script = (f"mount -t tmpfs -o size=600k tmpfs {mnt} || exit 99\n"
              f"{build}; echo first=$?\n"
              f"mount -o remount,size=64m {mnt}\n"
              f"{build}; echo second=$?\n"
              f"{sys.executable} -m ddcache.cli_main verify {mnt}/c --quiet; echo verify=$?\n")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    if r.returncode == 99:
        pytest.skip("cannot mount a tmpfs here")
    assert "first=2" in r.stdout and "second=0" in r.stdout and "verify=0" in r.stdout, r.stdout + r.stderr
    errors = error_lines(r.stderr)
    assert "Traceback" not in r.stderr
    assert any("no space left on device" in line and "re-run to resume" in line for line in errors), errors
    assert any(line.startswith("resuming ") for line in errors), errors


# ---------------------------------------------------------------- faults while reading


_BENCH_WITH_A_DYING_WORKER = """
import os, signal, sys
import trainer  # noqa: F401
from ddcache import decoding
parent, call = os.getpid(), decoding.RecordDecoder.__call__
def die_in_a_worker(self, record):
    if os.getpid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
    return call(self, record)
decoding.RecordDecoder.__call__ = die_in_a_worker
from ddcache.cli import run
sys.argv = ["ddcache", "bench", sys.argv[1], "--workers", "2", "--epoch"]
run()
"""


def test_a_killed_bench_worker_is_one_line(good_cache):
    r = subprocess.run([sys.executable, "-c", _BENCH_WITH_A_DYING_WORKER, str(good_cache)], capture_output=True,
                       text=True, timeout=300)
    lines = [line for line in error_lines(r.stderr) if line.startswith("ddcache:")]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and "died" in lines[0], r.stderr[-2000:]


def test_bench_on_a_cache_with_a_corrupt_record_never_hangs(tmp_path):
    """The attack run saw ``bench --workers 2 --epoch`` hang 1 run in 16 on this (EpochRunner, now gone); 4 runs
    (a safety net, not a proof), each must end with the one line."""
    cache = _cache_with_record(tmp_path / "c", HOSTILE_RECORDS["boxes_nan"][0](_payload()))
    for _ in range(4):
        code, err = cli_child("bench", cache, "--workers", 2, "--epoch", timeout=120)
        assert code == 2 and "corrupt record '00000001'" in err and "Traceback" not in err, err[-2000:]
        assert len(error_lines(err)) == 1, err[-2000:]  # no TensorFlow start-up lines, no tensorpack fork warning


# ---------------------------------------------------------------- found by the second (black-box) attack run


def test_overwrite_needs_a_ddcache_signature_not_just_the_file_names(real_source, good_cache, tmp_path, capsys):
    """Was: any directory holding only ``data.mdb`` + ``lock.mdb`` (every LMDB database) or a ``manifest.json``,
    and any COCO dataset of ``images/`` + ``instances.json``, was deleted by ``--overwrite``."""
    import lmdb

    foreign_lmdb = tmp_path / "their_lmdb"
    env = lmdb.open(str(foreign_lmdb), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"their data")
    env.close()
    foreign_manifest = tmp_path / "webapp"
    foreign_manifest.mkdir()
    (foreign_manifest / "manifest.json").write_text('{"name": "my app"}')
    for mine in (foreign_lmdb, foreign_manifest):
        before = _listing(mine)
        code, _, err = cli(capsys, "build", "fintabnet", "--source", real_source, "--split", "val", "--out", mine,
                           "--overwrite", "--quiet")
        assert_one_line(code, err, 2, "not a ddcache cache")
        assert _listing(mine) == before
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    (coco / "images" / "holiday.jpg").write_bytes(b"their photo")
    (coco / "instances.json").write_text('{"info": {"description": "my dataset"}, "images": []}')
    before = _listing(coco)
    code, _, err = cli(capsys, "export", good_cache, "--out", coco, "--overwrite")
    assert_one_line(code, err, 2, "not an export")
    assert _listing(coco) == before
    killed = tmp_path / "killed_export"  # an export killed before instances.json: still ours, replaced
    (killed / "images").mkdir(parents=True)
    (killed / "images" / "00000000.png").write_bytes(b"partial")
    assert cli(capsys, "export", good_cache, "--out", killed, "--overwrite")[0] == 0
    assert (killed / "instances.json").exists()


def _listing(path):
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else None) for p in Path(path).rglob("*"))


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_a_user_file_named_out_lock_is_left_alone(kind, real_source, tmp_path, capsys):
    """Was: the build truncated ``OUT.lock`` (or the file a symlink of that name points to) and deleted it."""
    out, lock, target = tmp_path / "c", tmp_path / "c.lock", tmp_path / "notes.txt"
    target.write_text("my notes")
    if kind == "file":
        os.rename(target, lock)
        target = lock
    else:
        os.symlink(target, lock)
    code, _, err = cli(capsys, "build", "fintabnet", "--source", real_source, "--split", "val", "--out", out, "--quiet")
    assert_one_line(code, err, 2, "is not a ddcache lock file")
    assert target.read_text() == "my notes" and (lock.exists() or lock.is_symlink()) and not out.exists()


def test_environment_os_errors_are_one_line(good_cache, tmp_path, capsys, monkeypatch):
    """Was: a traceback for a path longer than the filesystem allows (every command) and for a full disk while
    ``export`` / ``show`` / ``sample`` write (the build alone had its "no space left" line)."""
    import errno

    from ddcache.coco import CocoBuilder

    long = tmp_path / ("x" * 300)
    for args in (("info", long), ("show", good_cache, "--out", str(long) + ".png"), ("export", good_cache, "--out", long),
                 ("build", "fintabnet", "--source", tmp_path, "--out", long)):
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, 2, "File name too long")

    def full_disk(self, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(CocoBuilder, "write", full_disk)
    code, _, err = cli(capsys, "export", good_cache, "--out", tmp_path / "e")
    assert_one_line(code, err, 2, "instances.json: No space left on device")


def test_a_build_under_an_address_space_limit_is_one_line(tmp_path):
    """Was: ``lmdb.MemoryError`` traceback (LMDB maps 1 GiB) under ``ulimit -v``; now the re-run-to-resume line."""
    import lmdb

    from ddcache.cache_dir import write_failure

    failure = write_failure(lmdb.MemoryError(f"{tmp_path}/c.partial: Cannot allocate memory"), tmp_path / "c.partial")
    assert isinstance(failure, UserError) and "ulimit -v" in str(failure) and "re-run to resume" in str(failure)


def test_show_draws_a_large_image_subsampled(tmp_path, monkeypatch):
    """Was: a 5000 x 5000 record (within the record limit) made matplotlib allocate float64 copies: MemoryError
    traceback under a 1.5 GB limit. Drawings of large images are subsampled; the boxes keep their coordinates."""
    import cv2

    from ddcache import draw

    monkeypatch.setattr(draw, "MAX_DRAWN_PIXELS", 1 << 16)
    image = np.full((1000, 2000, 3), 255, np.uint8)
    counts = draw.draw_boxes(image, np.array([[10, 10, 1990, 990]], np.float32), np.array([2]), tmp_path / "d.png")
    drawn = cv2.imread(str(tmp_path / "d.png"))
    assert counts == {2: 1} and drawn.shape[1] < 1000  # 2000 px wide without the subsampling


def test_opencv_warnings_do_not_reach_stderr(capfd):
    """Was: a damaged PNG gave OpenCV's ``[ WARN:0@...] global grfmt_png.cpp ...`` line besides the error line."""
    payload = _payload()
    payload["image"]["data"] = payload["image"]["data"][:60]
    capfd.readouterr()
    with pytest.raises(CorruptRecordError, match="do not decode"):
        decode_record("00000001", msgpack.packb(payload, use_bin_type=True))
    assert capfd.readouterr().err == ""


def test_show_and_export_verify_checksums(tmp_path, capsys):
    """Was: ``show`` and ``export`` (which copies image bytes without decoding them) read a record whose bytes
    fail the checksum without noticing; export wrote the damaged image, exit 0."""
    from cache_factory import corrupt_record

    cache = make_cache(tmp_path / "c", 2)
    key = corrupt_record(cache, 1)
    for args in (("show", cache, "--index", 1, "--out", tmp_path / "s.png"), ("export", cache, "--out", tmp_path / "e")):
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, 2, f"corrupt record '{key}': checksum mismatch")


def test_counting_annotation_lines_holds_one_piece_of_a_long_line(tmp_path):
    """Was: the progress bar's line count iterated the file (a 200 MB line without a newline: 442 MB RSS)."""
    import tracemalloc

    from ddcache.datasets.base import count_jsonl_lines

    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \n' + b"x" * (16 << 20) + b"\n{}")
    tracemalloc.start()
    try:
        assert count_jsonl_lines(path) == 3
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # iterating the file holds the whole 16 MB line


@pytest.mark.parametrize("value", ["-3", "1.5", "\u0663", "0x10", "'2'"])
def test_span_values_other_than_plain_integers_are_bad_structure(value):
    """Was: ``colspan="-3"`` / ``"1.5"`` were read as 1 (or 1 of "1.5", 3 of an Arabic-Indic digit), silently."""
    from ddcache.grid import StructureError, layout

    tokens = ["<table>", "<tr>", "<td", f' colspan="{value}"' if "'" not in value else f" colspan={value}", ">", "</td>",
              "</tr>", "</table>"]
    with pytest.raises(StructureError, match="not a positive integer"):
        layout(tokens)


def test_predict_refuses_a_huge_image_from_its_header(tmp_path):
    """Was: a few-KB PNG declaring 30000 x 30000 pixels was decoded and run through the model (5.8 GB, exit 0)."""
    from click.testing import CliRunner

    from trainer.predictor import predict

    image = tmp_path / "huge.png"
    image.write_bytes(_huge_white_png(30000, 30000))
    r = CliRunner().invoke(predict, ["--config", "configs/tiny.yaml", "--weights", str(tmp_path / "none"), "--image",
                                     str(image), "--out", str(tmp_path / "p")])
    assert isinstance(r.exception, UserError) and "30000x30000 pixels, more than the limit" in str(r.exception)


def test_dask_overwrite_deletes_only_ddcache_caches(tmp_path):
    """Was: ``build --dask ... --overwrite`` ran ``rmtree(--out)`` when --out held any ``manifest.json`` (the
    user's other files with it), and ``rmtree`` of any ``shard-I-of-N`` directory."""
    from types import SimpleNamespace

    from ddcache.dask_build import plan

    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "manifest.json").write_text('{"name": "my app"}')
    (mine / "thesis.tex").write_text("years of work")
    shards = tmp_path / "shards"
    (shards / "shard-0-of-2").mkdir(parents=True)
    (shards / "shard-0-of-2" / "manifest.json").write_text('{"format": "ddcache"}')
    (shards / "shard-0-of-2" / "notes.txt").write_text("mine")
    for parent in (mine, shards):
        before = _listing(parent)
        with pytest.raises(UserError, match="is not a ddcache cache"):
            plan(SimpleNamespace(overwrite=True), parent, 3)
        assert _listing(parent) == before


@pytest.mark.parametrize("files", ['"ab"', "[5]", "[null]"])
def test_sample_overwrite_with_a_hostile_marker_deletes_nothing(files, tmp_path, capsys):
    """Was: ``"files": "ab"`` deleted the user's files ``a`` and ``b`` (a string iterates as names); ``[5]`` was a
    TypeError traceback."""
    out = tmp_path / "s"
    out.mkdir()
    (out / "ddcache_sample.json").write_text('{"files": %s}' % files)
    (out / "a").write_text("mine")
    code, _, err = cli(capsys, "sample", "fintabnet", "--out", out, "--overwrite")
    assert_one_line(code, err, 2, "is unreadable")
    assert (out / "a").read_text() == "mine"


def test_show_to_a_full_device_is_one_line_not_wrote(good_cache, capsys):
    """Was: ``show --out /dev/full`` said "wrote ...", exit 0 (matplotlib's PNG writer lost the write error)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    code, out, err = cli(capsys, "show", good_cache, "--index", "0", "--out", "/dev/full")
    assert_one_line(code, err, 2, "No space left on device")
    assert "wrote" not in out


def test_export_of_a_raw_cache_to_a_full_disk_is_one_line(tmp_path):
    """Was: raw-encoded images went through ``cv2.imwrite``, which returns False on a full disk: exit 0, images
    missing. An 8 KB tmpfs in a private mount namespace holds the export (each PNG is larger)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("user + mount namespaces are not available here")
    cache = make_cache(tmp_path / "raw", 2, encoding="raw", rows=lambda i: 8, cols=lambda i: 8, cell_px=100)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=8k tmpfs {mnt} || exit 99\n"
              f"{sys.executable} -m ddcache.cli_main export {cache} --out {mnt}/e; echo code=$?\n")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if r.returncode == 99:
        pytest.skip("cannot mount a tmpfs here")
    lines = error_lines(r.stderr)
    assert "code=2" in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert len(lines) == 1 and "No space left on device" in lines[0], lines
