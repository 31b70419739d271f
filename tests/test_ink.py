"""Ink checks on built crops: boxes sit on the drawn text, whatever the dataset, mode or mediabox.

A coordinate bug (no y flip, wrong scale, ignored mediabox origin, crop
offset) moves boxes off the text, so: every cell box must contain dark
pixels, and almost no dark pixel of the crop may lie outside all cell boxes.
"""
import numpy as np
import pytest

from ddcache import categories as C
from ddcache.build import BuildOptions, build_cache
from ddcache.store import CacheReader

DARK = 110  # ruling lines in the synthetic data are light grey, text is black


def _ink_stats(sample, category=C.CELL, tol=2):
    dark = sample["image"].min(axis=2) < DARK
    h, w = dark.shape
    covered = np.zeros_like(dark)
    empty = 0
    for box in sample["boxes"][sample["category_ids"] == category]:
        x0, y0 = max(0, int(np.floor(box[0])) - tol), max(0, int(np.floor(box[1])) - tol)
        x1, y1 = min(w, int(np.ceil(box[2])) + tol), min(h, int(np.ceil(box[3])) + tol)
        if not dark[int(np.floor(box[1])):int(np.ceil(box[3])), int(np.floor(box[0])):int(np.ceil(box[2]))].any():
            empty += 1
        covered[y0:y1, x0:x1] = True
    outside = (dark & ~covered).sum() / max(1, dark.sum())
    return empty, outside


@pytest.mark.parametrize("dataset", ["fintabnet", "pubtabnet"])
def test_cells_sit_on_ink_in_table_crops(dataset, synth_fintabnet, synth_pubtabnet, tmp_path):
    source = synth_fintabnet if dataset == "fintabnet" else synth_pubtabnet
    build_cache(BuildOptions(dataset=dataset, source=str(source), split="train", out=str(tmp_path / "c"), workers=2), progress=False)
    reader = CacheReader(tmp_path / "c")
    assert len(reader) >= 10
    mediaboxes = set()
    for i in range(len(reader)):
        s = reader.get(i)
        empty, outside = _ink_stats(s)
        assert empty == 0, f"sample {i}: {empty} cell boxes without text under them"
        assert outside < 0.03, f"sample {i}: {outside:.1%} of the ink lies outside every cell box"
        mediaboxes.add(tuple(s["provenance"]["mediabox"][:2]))
    if dataset == "fintabnet":
        assert len(mediaboxes) > 1, "the sample should include pages with a non-zero mediabox origin"


def test_ink_check_catches_a_missing_flip(synth_fintabnet, tmp_path):
    build_cache(BuildOptions(dataset="fintabnet", source=str(synth_fintabnet), split="train", out=str(tmp_path / "c"), workers=1, max_datapoints=3), progress=False)
    s = CacheReader(tmp_path / "c").get(0)
    h = s["image"].shape[0]
    s["boxes"] = s["boxes"].copy()
    s["boxes"][:, [1, 3]] = h - s["boxes"][:, [3, 1]]  # what forgetting the y flip would do
    empty, outside = _ink_stats(s)
    assert empty > 0 or outside > 0.1


def test_page_mode_tables_and_cells_on_ink(synth_fintabnet, tmp_path):
    build_cache(BuildOptions(dataset="fintabnet", source=str(synth_fintabnet), split="train", out=str(tmp_path / "p"), mode="page", workers=2), progress=False)
    reader = CacheReader(tmp_path / "p")
    two_tables = 0
    for i in range(len(reader)):
        s = reader.get(i)
        empty, _ = _ink_stats(s)
        assert empty == 0
        tables = s["boxes"][s["category_ids"] == C.TABLE]
        two_tables += len(tables) > 1
        dark = s["image"].min(axis=2) < DARK
        for t in tables:  # the table box holds the table's text
            assert dark[int(t[1]):int(t[3]), int(t[0]):int(t[2])].mean() > 0.005
    assert two_tables >= 1
