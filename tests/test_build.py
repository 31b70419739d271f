"""Build guarantees: nothing lost on bad input, deterministic across workers, resumable after SIGKILL, sharded."""
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ddcache import categories as C
from ddcache.build import BuildOptions, build_cache
from ddcache.errors import UserError
from ddcache.manifest import read_manifest
from ddcache.resolution import Resolution
from ddcache.selection import RecordFilter
from ddcache.store import CacheReader
from ddcache.writer import CacheWriter


def _opts(source, out, **kw):
    base = dict(dataset="fintabnet", source=str(source), split="val", out=str(out), workers=1, resolution=Resolution(72))
    base.update(kw)
    return BuildOptions(**base)


@pytest.fixture()
def bad_source(real_source, tmp_path):
    """The 4 real lines plus one line of every bad-input class."""
    src = tmp_path / "bad"
    shutil.copytree(real_source, src)
    good = [json.loads(l) for l in (src / "FinTabNet_1.0.0_table_val.jsonl").read_text().splitlines()]
    base = good[0]

    def variant(**changes):
        rec = json.loads(json.dumps(base))
        rec.update(changes)
        return rec

    mismatch = variant(table_id=2)
    mismatch["html"]["cells"] = mismatch["html"]["cells"][:-1]
    outside = variant(table_id=3)
    outside["html"]["cells"][1]["bbox"] = [5000.0, 5000.0, 5010.0, 5010.0]
    no_cells = variant(table_id=4)
    for cell in no_cells["html"]["cells"]:
        cell.pop("bbox", None)
    wider = variant(table_id=5)
    wider["html"]["structure"]["tokens"] = wider["html"]["structure"]["tokens"][:-2] + ["<td>", "</td>", "</tr>", "</table>"]
    (src / "pdf" / "BAD").mkdir()
    (src / "pdf" / "BAD" / "corrupt.pdf").write_bytes(b"%PDF-1.4\nthis is not a pdf\n")
    lines = [json.dumps(r) for r in good]
    lines += [
        '{"table_id": 1, "html": {"structure": ',  # malformed JSON
        json.dumps(variant(table_id=6, filename="NOPE/2017/page_1.pdf")),  # missing PDF
        json.dumps(variant(table_id=7, filename="BAD/corrupt.pdf")),  # corrupt PDF
        json.dumps(mismatch),  # html cells != <td> tokens
        json.dumps(outside),  # box outside the page
        json.dumps(no_cells),  # table without any boxed cell
        json.dumps(variant(table_id=8, filename="../../../etc/passwd")),  # escapes the source root
        json.dumps(wider),  # structure rows do not add up
    ]
    (src / "FinTabNet_1.0.0_table_val.jsonl").write_text("\n".join(lines) + "\n")
    return src


def test_bad_input_is_skipped_counted_and_reported(bad_source, tmp_path):
    summary = build_cache(_opts(bad_source, tmp_path / "c"), progress=False)
    expected = {
        "malformed_json": 1, "missing_file": 1, "corrupt_file": 1, "cell_count_mismatch": 1,
        "box_outside_page": 1, "no_cells": 1, "path_escape": 1, "bad_structure": 1,
    }
    assert summary["skipped"] == expected
    assert summary["num_read"] == 12
    assert summary["num_read"] == summary["num_samples"] + summary["num_skipped"]
    report = [json.loads(l) for l in (tmp_path / "c" / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["line_no"] for r in report) == list(range(5, 13))
    assert {r["reason"] for r in report} == set(expected)


def test_same_records_whatever_the_workers(replicated_source, tmp_path):
    a = build_cache(_opts(replicated_source, tmp_path / "w1", workers=1), progress=False)
    b = build_cache(_opts(replicated_source, tmp_path / "w2", workers=2), progress=False)
    assert a["num_samples"] == b["num_samples"] == 48
    assert read_manifest(tmp_path / "w1")["checksums"] == read_manifest(tmp_path / "w2")["checksums"]


def _build_cmd(source, out):
    return [sys.executable, "-m", "ddcache.cli_main", "build", "fintabnet", "--source", str(source), "--split", "val",
            "--out", str(out), "--workers", "1", "--dpi", "150", "--commit-every", "2", "--quiet"]


def test_sigkill_and_resume_gives_the_same_cache(replicated_source, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_build_cmd(replicated_source, ref), check=True, capture_output=True)
    ref_bytes = (ref / "data.mdb").stat().st_size
    out = tmp_path / "resumed"
    partial = tmp_path / "resumed.partial"
    data = partial / "data.mdb"
    kills = []
    # Kill when the partial LMDB has reached 20%, 50%, 80% of the finished size: mid-write, at
    # whatever instruction the build happens to be in.
    for fraction in (0.2, 0.5, 0.8):
        proc = subprocess.Popen(_build_cmd(replicated_source, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300  # a safety net against a build that never ends
        while proc.poll() is None and not (data.exists() and data.stat().st_size >= fraction * ref_bytes):
            assert time.monotonic() < deadline, "the build neither grew nor ended"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)  # a no-op if it has ended meanwhile
        proc.wait()
        if proc.returncode != -signal.SIGKILL:  # it finished before the kill landed: nothing left to interrupt
            assert proc.returncode == 0
            break
        kills.append(data.stat().st_size)
        assert not out.exists(), "a killed build must not publish"
        with pytest.raises(UserError, match="unfinished build"):
            CacheReader(partial)
    assert len(kills) >= 2
    if not out.exists():
        subprocess.run(_build_cmd(replicated_source, out), check=True, capture_output=True)
    assert not partial.exists()
    m_ref, m_res = read_manifest(ref), read_manifest(out)
    assert m_res["counts"]["num_samples"] == m_ref["counts"]["num_samples"] == 48
    assert m_res["checksums"] == m_ref["checksums"]
    assert m_res["counts"]["num_read"] == 48


def test_shards_are_disjoint_and_cover_everything(replicated_source, tmp_path):
    whole = build_cache(_opts(replicated_source, tmp_path / "all"), progress=False)
    ids = []
    for i in range(3):
        build_cache(_opts(replicated_source, tmp_path / f"s{i}", shard=(i, 3)), progress=False)
        r = CacheReader(tmp_path / f"s{i}")
        ids += [r.get(k, with_image=False)["provenance"]["table_id"] for k in range(len(r))]
    assert len(ids) == len(set(ids)) == whole["num_samples"]
    joined = CacheReader([tmp_path / f"s{i}" for i in range(3)])
    assert len(joined) == whole["num_samples"]


def test_filters_and_max_datapoints(replicated_source, tmp_path):
    s = build_cache(_opts(replicated_source, tmp_path / "f", record_filter=RecordFilter(min_rows=6)), progress=False)
    r = CacheReader(tmp_path / "f")
    rows = r.index_column("num_rows")
    assert len(rows) == s["num_samples"] > 0 and rows.min() >= 6
    assert s["skipped"] == {"filter:min_rows": 48 - s["num_samples"]}
    s2 = build_cache(_opts(replicated_source, tmp_path / "m", max_datapoints=5), progress=False)
    assert s2["num_samples"] == 5 and s2["num_read"] == 5


def test_table_crop_geometry_and_provenance(real_source, tmp_path):
    build_cache(_opts(real_source, tmp_path / "c", resolution=Resolution(), pad=4.0), progress=False)
    r = CacheReader(tmp_path / "c")
    lines = [json.loads(l) for l in (real_source / "FinTabNet_1.0.0_table_val.jsonl").read_text().splitlines()]
    for i in range(len(r)):
        s = r.get(i)
        h, w = s["image"].shape[:2]
        # auto resolution: exactly the largest size training uses, never a pixel above it
        assert min(h, w) <= 1200 and max(h, w) <= 1408
        assert min(h, w) == 1200 or max(h, w) == 1408
        cells = s["boxes"][s["category_ids"] == C.CELL]
        assert (cells[:, 0] >= 0).all() and (cells[:, 2] <= w).all() and (cells[:, 3] <= h).all()
        # map crop boxes back to PDF points through the provenance and compare with the annotation
        p = s["provenance"]
        sc, (ox, oy) = p["scale"], p["crop_origin"]
        ph = p["page_box"][3] - p["page_box"][1]
        back = np.stack([(cells[:, 0] + ox) / sc, ph - (cells[:, 3] + oy) / sc, (cells[:, 2] + ox) / sc, ph - (cells[:, 1] + oy) / sc], 1)
        src = np.array([c["bbox"] for c in lines[i]["html"]["cells"] if "bbox" in c])
        assert np.allclose(back, src, atol=0.01)
        # rows and columns: one per grid line that has a span-1 cell, stretched over the table
        rows = s["boxes"][s["category_ids"] == C.ROW]
        cols = s["boxes"][s["category_ids"] == C.COLUMN]
        assert len(rows) <= s["num_rows"] and len(cols) <= s["num_cols"]
        assert np.allclose(rows[:, 0], rows[0, 0]) and np.allclose(rows[:, 2], rows[0, 2])
        assert np.allclose(cols[:, 1], cols[0, 1]) and np.allclose(cols[:, 3], cols[0, 3])


def test_user_mistakes(real_source, tmp_path):
    build_cache(_opts(real_source, tmp_path / "c"), progress=False)
    with pytest.raises(UserError, match="already exists"):
        build_cache(_opts(real_source, tmp_path / "c"), progress=False)
    build_cache(_opts(real_source, tmp_path / "c", overwrite=True), progress=False)
    with pytest.raises(UserError, match="does not exist"):
        build_cache(_opts(tmp_path / "nowhere", tmp_path / "d"), progress=False)
    with pytest.raises(UserError, match="unknown dataset"):
        build_cache(BuildOptions(dataset="imagenet", source=str(real_source), out=str(tmp_path / "e")), progress=False)
    with pytest.raises(UserError, match="no split"):
        build_cache(_opts(real_source, tmp_path / "f", split="dev"), progress=False)


def test_page_mode_has_table_and_cell_boxes(real_source, tmp_path):
    s = build_cache(_opts(real_source, tmp_path / "p", mode="page", resolution=Resolution()), progress=False)
    assert s["num_samples"] == 4 and s["boxes_per_category"]["TABLE"] == 4
    r = CacheReader(tmp_path / "p")
    sample = r.get(0)
    h, w = sample["image"].shape[:2]
    assert (w, h) == (1088, 1408)  # Letter page at the largest training size
    tables = sample["boxes"][sample["category_ids"] == C.TABLE]
    cells = sample["boxes"][sample["category_ids"] == C.CELL]
    assert len(tables) == 1 and len(cells) == 14
    # every cell lies inside its table box
    t = tables[0]
    assert (cells[:, 0] >= t[0] - 1).all() and (cells[:, 2] <= t[2] + 1).all()
    assert (cells[:, 1] >= t[1] - 1).all() and (cells[:, 3] <= t[3] + 1).all()


def test_overwrite_discards_a_partial_build_with_other_options(real_source, tmp_path):
    other = _opts(real_source, tmp_path / "c", encoding="jpeg")
    CacheWriter.open(other.out, other.header()).close()  # an unfinished jpeg build
    with pytest.raises(UserError, match=r"other options \(encoding\)"):
        build_cache(_opts(real_source, tmp_path / "c"), progress=False)
    s = build_cache(_opts(real_source, tmp_path / "c", overwrite=True), progress=False)
    assert s["num_samples"] == 4


def test_build_and_read_time_filters_are_one_rule():
    """A table the build would skip as filter:X is exactly one the read-time selection drops."""
    f = RecordFilter(min_rows=2, max_rows=4, min_cols=3, max_cells=10)
    grid = [(r, c, n) for r in range(6) for c in range(6) for n in range(0, 14, 3)]
    kept = f.keep(*np.array(grid).T)
    assert [f.rejects(*g) is None for g in grid] == kept.tolist() and 0 < kept.sum() < len(grid)
    assert f.rejects(1, 3, 3) == "filter:min_rows" and f.rejects(3, 3, 12) == "filter:max_cells"
