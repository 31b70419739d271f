"""verify catches altered bytes and truncation; the CLI reports user mistakes in one line."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from ddcache.build import BuildOptions, build_cache
from ddcache.resolution import Resolution
from ddcache.store import CacheReader


@pytest.fixture(scope="module")
def cache(real_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("v") / "cache"
    build_cache(BuildOptions(dataset="fintabnet", source=str(real_source), split="val", out=str(out), workers=1,
                             resolution=Resolution(72)), progress=False)
    return out


def ddcache(*args):
    return subprocess.run([sys.executable, "-m", "ddcache.cli_main", *map(str, args)], capture_output=True, text=True)


def _copy(cache, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(cache, dst)
    return dst


def test_verify_clean_cache(cache):
    r = ddcache("verify", cache, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout


def test_verify_catches_one_flipped_byte(cache, tmp_path):
    dst = _copy(cache, tmp_path)
    raw = CacheReader(dst).get_raw(2)
    data = bytearray((dst / "data.mdb").read_bytes())
    needle = raw[len(raw) // 2: len(raw) // 2 + 64]
    pos = data.find(needle)
    assert pos > 0 and data.find(needle, pos + 1) == -1
    data[pos + 10] ^= 0x01
    (dst / "data.mdb").write_bytes(bytes(data))
    r = ddcache("verify", dst, "--quiet")
    assert r.returncode == 1
    assert "00000002" in r.stderr and "checksum" in r.stderr
    assert "00000001" not in r.stderr


def test_verify_catches_truncation(cache, tmp_path):
    dst = _copy(cache, tmp_path)
    size = (dst / "data.mdb").stat().st_size
    with open(dst / "data.mdb", "r+b") as f:
        f.truncate(size // 2)
    r = ddcache("verify", dst, "--quiet")
    assert r.returncode == 1
    assert "truncated" in r.stderr
    assert "Traceback" not in r.stderr


def test_info_json_fields(cache):
    r = ddcache("info", cache, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    for key in ("num_samples", "num_read", "skipped", "categories", "bytes", "schema_version", "dataset", "split", "mode"):
        assert key in info
    assert info["num_samples"] == 4 and info["dataset"] == "fintabnet" and info["mode"] == "table"
    assert set(info["categories"]) == {"CELL", "ROW", "COLUMN"} and info["categories"]["CELL"] == 159


def test_show_writes_png(cache, tmp_path):
    import cv2

    out = tmp_path / "s.png"
    r = ddcache("show", cache, "--index", 3, "--out", out)
    assert r.returncode == 0, r.stderr
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100
    # the legend's green (CELL) and blue (ROW) are present in the picture
    b, g, rr = img[..., 0].astype(int), img[..., 1].astype(int), img[..., 2].astype(int)
    assert ((g > 120) & (rr < 100) & (b < 100)).sum() > 50
    assert ((b > 140) & (rr < 100)).sum() > 50


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "nosuch", "--source", ".", "--out", "x"], "unknown dataset"),
        (["build", "fintabnet", "--source", "/nonexistent/dir", "--out", "/tmp/x"], "does not exist"),
        (["info", "/nonexistent/cache"], "no such cache"),
        (["verify", "/tmp"], "not a ddcache cache"),
        (["show", "/nonexistent", "--out", "a.png"], "no such cache"),
    ],
)
def test_user_errors_are_one_line(args, message):
    r = ddcache(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_existing_out_needs_overwrite(cache, real_source):
    r = ddcache("build", "fintabnet", "--source", real_source, "--split", "val", "--out", cache, "--quiet")
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr


def test_show_index_out_of_range(cache, tmp_path):
    r = ddcache("show", cache, "--index", 99, "--out", tmp_path / "a.png")
    assert r.returncode == 2 and "out of range" in r.stderr


def test_export_coco_loads_in_pycocotools(cache, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "coco"
    r = ddcache("export", cache, "--format", "coco", "--out", out, "--categories", "CELL")
    assert r.returncode == 0, r.stderr
    coco = COCO(str(out / "instances.json"))
    assert len(coco.getImgIds()) == 4
    assert len(coco.getAnnIds()) == 159 and coco.getCatIds() == [2]
    img = coco.loadImgs(1)[0]
    import cv2

    pixels = cv2.imread(str(out / img["file_name"]))
    assert pixels.shape[:2] == (img["height"], img["width"])
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    x, y, w, h = ann["bbox"]
    assert 0 <= x and x + w <= img["width"] + 1e-3 and 0 <= y and y + h <= img["height"] + 1e-3
    again = ddcache("export", cache, "--out", out)
    assert again.returncode == 2 and "already exists" in again.stderr
