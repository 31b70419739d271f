"""PubTabNet reader: image coordinates (no flip), real <thead> header flags, split field, never upsampled."""
import json

import cv2
import numpy as np

from ddcache import categories as C
from ddcache.build import BuildOptions, build_cache
from ddcache.store import CacheReader


def _write(root, lines):
    (root / "val").mkdir(parents=True)
    (root / "train").mkdir()
    img = np.full((120, 300, 3), 255, np.uint8)
    cells = []
    for r, y in enumerate((30, 70, 105)):
        for c, x in enumerate((10, 160)):
            text = f"r{r}c{c}"
            (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
            cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
            cells.append({"tokens": list(text), "bbox": [x, y - h, x + w, y + base]})
    cv2.imwrite(str(root / "val" / "PMC1_003_00.png"), img)
    tokens = ["<thead>", "<tr>", "<td>", "</td>", "<td>", "</td>", "</tr>", "</thead>", "<tbody>"]
    tokens += ["<tr>", "<td>", "</td>", "<td>", "</td>", "</tr>"] * 2 + ["</tbody>"]
    rec = {"filename": "PMC1_003_00.png", "split": "val", "imgid": 7, "html": {"structure": {"tokens": tokens}, "cells": cells}}
    other = dict(rec, split="train", imgid=8)
    (root / "PubTabNet_2.0.0.jsonl").write_text("\n".join(json.dumps(x) for x in [other, rec] + lines) + "\n")
    return cells


def test_pubtabnet_build(tmp_path):
    cells = _write(tmp_path / "ptn", ['{"broken'])
    s = build_cache(BuildOptions(dataset="pubtabnet", source=str(tmp_path / "ptn"), split="val", out=str(tmp_path / "c"), workers=1), progress=False)
    # the train line is not part of a val build; the broken line is read and skipped
    assert s["num_samples"] == 1 and s["num_read"] == 2 and s["skipped"] == {"malformed_json": 1}
    sample = CacheReader(tmp_path / "c").get(0)
    assert sample["image"].shape == (120, 300, 3)  # never upsampled
    is_cell = sample["category_ids"] == C.CELL
    assert np.allclose(sample["boxes"][is_cell], np.array([c["bbox"] for c in cells], np.float32))
    assert sample["attributes"]["header"][is_cell].tolist() == [1, 1, 0, 0, 0, 0]
    assert (sample["category_ids"] == C.ROW).sum() == 3 and (sample["category_ids"] == C.COLUMN).sum() == 2
    assert sample["provenance"]["table_id"] == 7
