"""trainer.coco_eval: the COCO evaluator (maxDets 50/200/600, seed area ranges) on hand-made cases."""
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ddcache.categories import CELL, ROW
from trainer.coco_eval import CocoEvaluator, format_stats


def grid_boxes(n, w=30.0, h=12.0, per_row=10):
    """n disjoint boxes of w x h px (area 360: 'medium' in the seed's ranges), laid out on a grid."""
    out = [[(i % per_row) * (w + 5), (i // per_row) * (h + 5)] for i in range(n)]
    return np.array([[x, y, x + w, y + h] for x, y in out], dtype=np.float32)


def sample(key, boxes, labels):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return {
        "key": key,
        "image": np.zeros((200, 400, 3), dtype=np.uint8),
        "boxes": boxes,
        "category_ids": np.asarray(labels, dtype=np.int32),
        "attributes": {},
        "provenance": {},
    }


def as_detections(boxes, labels, scores=None):
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.ones(len(boxes), dtype=np.float32) if scores is None else np.asarray(scores, dtype=np.float32)
    return {"boxes": boxes, "scores": scores, "labels": np.asarray(labels, dtype=np.int64)}


def two_category_images():
    """Three images, labels 1 and 2 mixed."""
    out = []
    for i in range(3):
        boxes = grid_boxes(6 + i)
        labels = np.array([1 + (j % 2) for j in range(len(boxes))])
        out.append(sample(f"{i:08d}", boxes, labels))
    return out


def test_perfect_detections_give_one_overall_and_per_category():
    ev = CocoEvaluator(["CELL", "ROW"])
    for s in two_category_images():
        ev.process(s, as_detections(s["boxes"], s["category_ids"]))
    stats = ev.evaluate()
    for name in ("AP", "AP50", "AP75", "APm", "AR", "AR50", "AR@50", "AR@600"):
        assert stats[name] == pytest.approx(1.0), name
    assert math.isnan(stats["APs"]) and math.isnan(stats["APl"])  # no gt in those ranges
    for cat in ("CELL", "ROW"):
        assert stats["per_category"][cat]["AP"] == pytest.approx(1.0)
        assert stats["per_category"][cat]["AP75"] == pytest.approx(1.0)
    assert stats["per_category"]["CELL"]["num_gt"] + stats["per_category"]["ROW"]["num_gt"] == 6 + 7 + 8
    assert stats["num_images"] == 3
    assert "CELL: AP 1.0000" in format_stats(stats)


def test_shift_by_fifth_of_width_passes_iou_half_but_not_075():
    ev = CocoEvaluator(["CELL", "ROW"])
    for s in two_category_images():
        shifted = s["boxes"].copy()
        shifted[:, [0, 2]] += 0.2 * (shifted[:, 2:3] - shifted[:, 0:1])  # IoU = 0.8/1.2 = 0.667
        ev.process(s, as_detections(shifted, s["category_ids"]))
    stats = ev.evaluate()
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["AP75"] == pytest.approx(0.0)
    # IoU 0.667 clears the thresholds 0.50, 0.55, 0.60, 0.65: 4 of 10
    assert stats["AP"] == pytest.approx(0.4)
    assert stats["AR"] == pytest.approx(0.4)


def test_no_detections_gives_zero_not_a_crash():
    ev = CocoEvaluator(["CELL", "ROW"])
    for s in two_category_images():
        ev.process(s, {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0), "labels": np.zeros(0, int)})
    stats = ev.evaluate()
    assert stats["AP"] == 0.0 and stats["AP50"] == 0.0 and stats["AR"] == 0.0
    assert stats["per_category"]["ROW"]["AP"] == 0.0
    assert stats["num_detections"] == 0


def test_categories_are_reported_separately():
    ev = CocoEvaluator(["CELL", "ROW"])
    for s in two_category_images():
        cells = s["category_ids"] == 1
        ev.process(s, as_detections(s["boxes"][cells], s["category_ids"][cells]))  # ROW never detected
    stats = ev.evaluate()
    assert stats["per_category"]["CELL"]["AP"] == pytest.approx(1.0)
    assert stats["per_category"]["ROW"]["AP"] == 0.0
    assert stats["per_category"]["ROW"]["AR"] == 0.0
    assert stats["AP"] == pytest.approx(0.5)


def test_category_without_gt_is_nan_and_left_out_of_the_mean():
    ev = CocoEvaluator(["CELL", "ROW"])
    boxes = grid_boxes(4)
    # a ROW false positive: no ROW gt anywhere
    dets = as_detections(np.vstack([boxes, [[300, 150, 350, 180]]]), [1, 1, 1, 1, 2])
    ev.process(sample("00000000", boxes, [1, 1, 1, 1]), dets)
    stats = ev.evaluate()
    assert math.isnan(stats["per_category"]["ROW"]["AP"])
    assert stats["per_category"]["ROW"]["num_gt"] == 0
    assert stats["AP"] == pytest.approx(1.0)


def test_largest_max_dets_is_used_not_100():
    # default max_dets; one area range only, since pycocotools' matching loop is slow at 700x700
    ev = CocoEvaluator(["CELL"], area_ranges=[("all", 0, 1e6)])
    boxes = grid_boxes(700, w=8.0, h=8.0, per_row=40)
    scores = np.linspace(1.0, 0.3, 700)
    ev.process(sample("00000000", boxes, np.ones(700)), as_detections(boxes, np.ones(700), scores))
    stats = ev.evaluate()
    assert stats["AR@50"] == pytest.approx(50 / 700)
    assert stats["AR@200"] == pytest.approx(200 / 700)
    assert stats["AR@600"] == pytest.approx(600 / 700)
    assert stats["AR"] == stats["AR@600"]
    assert stats["AP50"] == pytest.approx(600 / 700, abs=0.01)  # precision 1 up to recall 600/700, 0 after


def test_seed_area_ranges_in_square_pixels():
    ev = CocoEvaluator(["CELL"])
    small, medium, large = [0, 0, 10, 10], [20, 0, 40, 20], [50, 0, 90, 40]  # 100, 400, 1600 px²
    huge = [0, 0, 1100, 1000]  # 1.1e6 px²: outside the seed's "all" range, so ignored
    gt = sample("00000000", [small, medium, large, huge], [1, 1, 1, 1])
    ev.process(gt, as_detections([large], [1]))
    stats = ev.evaluate()
    assert stats["APl"] == pytest.approx(1.0)
    assert stats["APs"] == 0.0 and stats["APm"] == 0.0
    assert stats["AR"] == pytest.approx(1 / 3)  # 3 gt in range, 1 found; the huge box does not count


def test_category_map_drops_and_relabels_cache_categories():
    ev = CocoEvaluator.for_cache_categories(["CELL"])
    cells = grid_boxes(3)
    row = [[0, 0, 100, 12]]
    s = sample("00000000", np.vstack([cells, row]), [CELL, CELL, CELL, ROW])
    ev.process(s, as_detections(cells, [1, 1, 1]))
    stats = ev.evaluate()
    assert stats["per_category"]["CELL"]["num_gt"] == 3
    assert stats["AP"] == pytest.approx(1.0)


def test_results_json_round_trips_through_load_res(tmp_path):
    ev = CocoEvaluator(["CELL", "ROW"])
    images = two_category_images()
    for s in images:
        ev.process(s, as_detections(s["boxes"] + 1.5, s["category_ids"], np.full(len(s["boxes"]), 0.75)))
    stats = ev.evaluate()
    ev.write_results(tmp_path / "results.json")
    ev.write_ground_truth(tmp_path / "gt.json")

    gt = COCO(str(tmp_path / "gt.json"))
    dt = gt.loadRes(str(tmp_path / "results.json"))
    raw = json.loads((tmp_path / "results.json").read_text())
    assert len(dt.getAnnIds()) == len(raw) == sum(len(s["boxes"]) for s in images)
    first = raw[0]
    assert set(first) == {"image_id", "category_id", "bbox", "score"}
    assert first["bbox"] == pytest.approx(
        [images[0]["boxes"][0][0] + 1.5, images[0]["boxes"][0][1] + 1.5, 30.0, 12.0]
    )
    # a fresh COCOeval on the written files reproduces the evaluator's arrays
    fresh = COCOeval(gt, dt, iouType="bbox")
    fresh.params.maxDets = [50, 200, 600]
    fresh.params.areaRng = [[0, 1e6], [0, 200], [200, 800], [800, 1e6]]
    fresh.params.areaRngLbl = ["all", "small", "medium", "large"]
    fresh.evaluate()
    fresh.accumulate()
    np.testing.assert_allclose(fresh.eval["precision"], ev.coco_eval.eval["precision"])
    assert 0.0 < stats["AP"] < 1.0


def test_rejects_repeated_images_bad_labels_and_empty_evaluation():
    ev = CocoEvaluator(["CELL"])
    with pytest.raises(ValueError, match="before any process"):
        ev.evaluate()
    s = sample("00000000", grid_boxes(2), [1, 1])
    ev.process(s, as_detections(s["boxes"], [1, 1]))
    with pytest.raises(ValueError, match="twice"):
        ev.process(s, as_detections(s["boxes"], [1, 1]))
    with pytest.raises(ValueError, match="outside 1..1"):
        ev.process(sample("00000001", grid_boxes(1), [1]), as_detections(grid_boxes(1), [2]))
    with pytest.raises(ValueError, match="gt label 3"):
        ev.process(sample("00000002", grid_boxes(1), [3]), as_detections(grid_boxes(1), [1]))
    assert ev.num_images == 1  # failed calls leave no partial state
    ev.reset()
    assert ev.num_images == 0 and ev.results == []
