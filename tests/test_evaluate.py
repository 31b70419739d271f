"""trainer.evaluate: the evaluation core on a real cache, the report, and ``ddtrain eval`` end to end."""
import json

import numpy as np
import pytest

from ddcache.build import BuildOptions, build_cache
from ddcache.resolution import Resolution
from ddcache.categories import CELL, ids_for
from ddcache.store import CacheReader
from trainer.coco_eval import CocoEvaluator
from trainer.evaluate import build_report, checkpoint_names, format_table, run_evaluation


@pytest.fixture(scope="module")
def cell_cache(real_source, tmp_path_factory):
    """The 4 real FinTabNet val tables as a table-mode cache (72 dpi: small images, fast)."""
    out = tmp_path_factory.mktemp("evalcache") / "val"
    build_cache(BuildOptions(dataset="fintabnet", source=str(real_source), split="val", out=str(out), workers=1,
                             resolution=Resolution(72)), progress=False)
    return out


def gt_predict_fn(reader, categories=("CELL",), shift=0.0):
    """A fake detector answering each image with its own gt boxes of ``categories`` (optionally shifted right).

    The image is identified by content: the fake is called with exactly the
    cache images, in order, so it walks the reader alongside run_evaluation
    and checks it receives the image it expects.
    """
    wanted = ids_for(categories)
    state = {"i": 0}

    def predict(image):
        sample = reader.get(state["i"])
        state["i"] += 1
        assert np.array_equal(image, sample["image"])  # the cache image as stored
        keep = np.isin(sample["category_ids"], wanted)
        boxes = sample["boxes"][keep].copy()
        boxes[:, 0::2] += shift
        labels = np.array([wanted.index(c) + 1 for c in sample["category_ids"][keep]], dtype=np.int32)
        return boxes, np.ones(len(boxes), dtype=np.float32), labels

    return predict


def test_ground_truth_as_detections_scores_one(cell_cache):
    reader = CacheReader([cell_cache])
    evaluator = CocoEvaluator.for_cache_categories(["CELL"])
    stats = run_evaluation(gt_predict_fn(reader), reader, evaluator)
    assert stats["num_images"] == len(reader) == 4
    for key in ("AP", "AP50", "AP75", "AR"):
        assert stats[key] == pytest.approx(1.0), key
    n_cells = sum(int((reader.get(i)["category_ids"] == CELL).sum()) for i in range(len(reader)))
    assert stats["per_category"]["CELL"]["num_gt"] == n_cells > 0  # rows/columns/table of the cache not scored
    assert stats["num_detections"] == n_cells


def test_shifted_detections_score_lower_and_max_datapoints_limits(cell_cache):
    reader = CacheReader([cell_cache])
    evaluator = CocoEvaluator.for_cache_categories(["CELL"])
    stats = run_evaluation(gt_predict_fn(reader, shift=4.0), reader, evaluator, max_datapoints=2)
    assert stats["num_images"] == 2
    assert stats["AP"] < 0.9
    assert stats["AP75"] < stats["AP50"]  # a 4 px shift hurts strict IoU more than loose IoU


def test_graph_level_predict_fn_gets_resized_image_and_boxes_are_mapped_back(cell_cache):
    """With cfg, run_evaluation resizes like evaluation does and divides the graph's boxes by the scale."""
    from trainer.config import load_user_config
    from trainer.train_data import eval_preprocess

    cfg = load_user_config("configs/tiny.yaml")
    reader = CacheReader([cell_cache])
    calls = []

    def graph_fn(image):
        i = len(calls)
        sample = reader.get(i)
        expected, scale = eval_preprocess(sample, cfg)
        calls.append(scale)
        assert image.shape == expected.shape
        keep = sample["category_ids"] == CELL
        # what a perfect detector answers in resized pixels, in the reference's frame: one scale sqrt(sx * sy)
        one_scale = np.sqrt(image.shape[0] / sample["image"].shape[0] * image.shape[1] / sample["image"].shape[1])
        boxes = sample["boxes"][keep] * one_scale
        return boxes, np.ones(len(boxes), np.float32), np.ones(len(boxes), np.int32)

    stats = run_evaluation(graph_fn, reader, CocoEvaluator.for_cache_categories(["CELL"]), cfg=cfg)
    assert len(calls) == 4 and any(np.abs(np.asarray(s) - 1.0).max() > 1e-3 for s in calls)  # the resize really happened
    assert stats["AP"] == pytest.approx(1.0)


def test_report_has_columns_and_differences():
    def stats(ap):
        return {"AP": ap, "AP50": ap, "AP75": float("nan"), "AR": ap, "num_images": 2, "num_detections": 3,
                "per_category": {"CELL": {"AP": ap, "AP50": ap, "AP75": ap, "AR": ap, "num_gt": 5}}}

    report = build_report({"a": stats(0.5), "b": stats(0.75)}, {"a": "x/a", "b": "y/b"})
    assert report["checkpoints"]["b"]["AP"] == 0.75 and report["checkpoints"]["a"]["weights"] == "x/a"
    assert report["differences"]["b"]["AP"] == pytest.approx(0.25)
    assert report["differences"]["b"]["per_category"]["CELL"]["AR"] == pytest.approx(0.25)
    assert report["checkpoints"]["a"]["AP75"] is None  # NaN is not JSON
    json.dumps(report, allow_nan=False)
    table = format_table(report)
    header = table.splitlines()[0].split()
    assert header[:3] == ["metric", "a", "b"] and "b - a" in table.splitlines()[0]
    ap_row = next(l for l in table.splitlines() if l.startswith("AP "))
    assert ap_row.split()[1:] == ["0.5000", "0.7500", "+0.2500"]


def test_checkpoint_names_are_unique_basenames():
    assert checkpoint_names(["runs/a/model-10", "runs/b/model-10", "m.npz", "m.npz"]) == [
        "a/model-10", "b/model-10", "m.npz", "m.npz#2"]
    assert checkpoint_names(["x/model-5", "y/model-9"]) == ["model-5", "model-9"]


@pytest.fixture
def two_checkpoints(tmp_path_factory):
    """Two differently random-initialised tiny detectors (``seed1/model-0``, ``seed2/model-0``)."""
    from test_predictor import random_checkpoint

    return [random_checkpoint(tmp_path_factory, seed) for seed in (1, 2)]


def test_eval_cli_compares_two_checkpoints(cell_cache, two_checkpoints, tmp_path):
    """One run with --json: stdout is the JSON report; report.txt is the table the text mode prints."""
    from click.testing import CliRunner

    from test_predictor import LOW_THRESH, TINY
    from trainer.cli import main

    a, b = two_checkpoints
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["eval", "--config", str(TINY), "--cache", str(cell_cache), "--weights", a,
                                       "--weights", b, "--max-datapoints", "2", "--set", LOW_THRESH[0], "--json",
                                       "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = ["seed1/model-0", "seed2/model-0"]
    assert list(report["checkpoints"]) == names
    for entry in report["checkpoints"].values():
        assert {"AP", "AP50", "AP75", "AR", "APs", "APm", "APl", "per_category"} <= set(entry)
        assert entry["num_images"] == 2 and entry["per_category"]["CELL"]["num_gt"] > 0
        assert entry["num_detections"] > 0
    stats_a, stats_b = report["checkpoints"].values()
    assert report["differences"][names[1]]["AR"] == pytest.approx(stats_b["AR"] - stats_a["AR"])
    assert json.loads((out / "report.json").read_text())["checkpoints"].keys() == report["checkpoints"].keys()

    table = (out / "report.txt").read_text().splitlines()
    assert table[0].split() == ["metric", names[0], names[1], names[1], "-", names[0]]
    ap_row = next(l for l in table if l.startswith("AP "))
    va, vb, diff = (float(v) for v in ap_row.split()[1:])
    assert (va, vb) == (round(stats_a["AP"], 4), round(stats_b["AP"], 4))
    assert diff == pytest.approx(vb - va, abs=2e-4)
    assert any(l.startswith("CELL AP") for l in table)

    # each checkpoint's detections, as COCO results for the shared ground truth; two random models differ
    gt = json.loads((out / "ground_truth.json").read_text())
    results = [json.loads((out / f"detections-{n.replace('/', '_')}.json").read_text()) for n in names]
    for res in results:
        assert res and {r["image_id"] for r in res} <= {im["id"] for im in gt["images"]}
    assert results[0] != results[1]


@pytest.mark.parametrize("what", ["weights", "cache"])
def test_eval_cli_missing_input_is_one_line_error(cell_cache, tmp_path, what):
    import subprocess
    import sys

    from test_predictor import TINY

    np.savez(tmp_path / "w.npz", x=np.zeros(1))  # exists; never loaded, the missing input is reported first
    weights = str(tmp_path / ("missing.npz" if what == "weights" else "w.npz"))
    cache = str(cell_cache) if what == "weights" else str(tmp_path / "no-cache")
    proc = subprocess.run([sys.executable, "-c", "from trainer.cli import run; run()", "eval", "--config", str(TINY),
                           "--cache", cache, "--weights", weights], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddtrain: error:")
    assert ("missing.npz" if what == "weights" else "no-cache") in lines[0]


def test_eval_with_a_damaged_later_weights_file_writes_nothing(cell_cache, two_checkpoints, tmp_path):
    """Was: the first checkpoint was evaluated and its detections written, then the damaged second one failed
    (no report.json): a half result."""
    from click.testing import CliRunner

    from test_predictor import TINY
    from trainer.cli import main

    damaged = tmp_path / "damaged.npz"
    np.savez(damaged, x=np.zeros(1000))
    damaged.write_bytes(damaged.read_bytes()[:200])  # truncated
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["eval", "--config", str(TINY), "--cache", str(cell_cache), "--weights",
                                       two_checkpoints[0], "--weights", str(damaged), "--max-datapoints", "1",
                                       "--out", str(out)])
    from ddcache.errors import UserError

    assert isinstance(result.exception, UserError), result.output
    assert "damaged.npz: unreadable .npz" in str(result.exception)
    assert not out.exists() or list(out.iterdir()) == []
