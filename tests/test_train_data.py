"""Sample dict -> datapoint mapping, category labels, and the training dataflow over a cache (in process and in workers)."""
import os
import pickle
import types

import numpy as np
import pytest

import trainer  # noqa: F401  (before tensorpack: sets TF_USE_LEGACY_KERAS)
from cache_factory import corrupt_record, make_cache, write_records
from child_run import run_until_marker
from ddcache import categories
from trainer.anchors import feature_shape
from trainer.train_data import (TrainingMapper, build_train_dataflow, category_labels, datapoint_names, expand_compact,
                                eval_preprocess, profile_stages)

NS = types.SimpleNamespace
STRIDES = (4, 8, 16, 32, 64)


def _cfg(cats=("CELL",)):
    return NS(PREPROC=NS(TRAIN_SHORT_EDGE_SIZE=[600, 1200], MAX_SIZE=1408, SHORT_EDGE_SIZE=800),
              FPN=NS(ANCHOR_STRIDES=STRIDES, RESOLUTION_REQUIREMENT=32),
              RPN=NS(ANCHOR_SIZES=(8, 16, 32, 64, 128), ANCHOR_RATIOS=(0.25, 0.5, 1.0),
                     POSITIVE_ANCHOR_THRESH=0.7, NEGATIVE_ANCHOR_THRESH=0.3,
                     BATCH_PER_IM=512, FG_RATIO=0.5, CROWD_OVERLAP_THRESH=9.99, BEST_ANCHOR_RULE="reference"),
              DATA=NS(CATEGORIES=list(cats)), TRAIN=NS(SEED=0))


def _sample(seed, h=120, w=200, cells=12, key=None):
    rng = np.random.RandomState(seed)
    x, y = rng.uniform(0, w - 40, cells), rng.uniform(0, h - 12, cells)
    cell_boxes = np.stack([x, y, x + rng.uniform(8, 40, cells), y + rng.uniform(5, 12, cells)], 1)
    boxes = np.concatenate([[[0, 0, w, h]], cell_boxes, [[0, 0, w, 10]]]).astype(np.float32)
    ids = np.array([categories.TABLE] + [categories.CELL] * cells + [categories.ROW], np.int32)
    return {"key": key or f"{seed:08d}", "image": rng.randint(0, 255, (h, w, 3)).astype(np.uint8),
            "boxes": boxes, "category_ids": ids, "attributes": {}, "num_rows": 1, "num_cols": 1, "provenance": {}}


def _check_datapoint(dp, n_gt=None):
    names = datapoint_names()
    assert len(dp) == len(names) == 13
    image = dp[0]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    h, w = image.shape[:2]
    assert 600 <= min(h, w) <= 1200 and max(h, w) <= 1408
    for k, stride in enumerate(STRIDES):
        labels, boxes = dp[1 + 2 * k], dp[2 + 2 * k]
        fh, fw = feature_shape(h, w, stride)
        assert labels.dtype == np.int32 and labels.shape == (fh, fw, 3)
        assert boxes.dtype == np.float32 and boxes.shape == (fh, fw, 3, 4)
    gt_boxes, gt_labels = dp[-2], dp[-1]
    assert gt_boxes.dtype == np.float32 and gt_boxes.shape[1] == 4
    assert gt_labels.dtype == np.int64 and gt_labels.shape == (len(gt_boxes),)
    assert (gt_boxes[:, 2] <= w).all() and (gt_boxes[:, 3] <= h).all() and (gt_boxes >= 0).all()
    if n_gt is not None:
        assert len(gt_boxes) == n_gt


def test_category_labels_follow_config_order():
    ids = np.array([1, 2, 3, 4, 2, 7], np.int32)
    assert category_labels(ids, _cfg(("CELL",))).tolist() == [0, 1, 0, 0, 1, 0]
    assert category_labels(ids, _cfg(("ROW", "COLUMN"))).tolist() == [0, 0, 1, 2, 0, 0]
    assert category_labels(ids, _cfg(("column", "table"))).tolist() == [2, 0, 0, 1, 0, 0]


def test_mapper_output_contract_and_dropped_categories():
    mapper = TrainingMapper(_cfg(), seed=0)
    dp = mapper.map(_sample(0), np.random.RandomState(0))
    _check_datapoint(dp, n_gt=12)  # TABLE and ROW boxes dropped, 12 cells left
    assert (dp[-1] == 1).all()
    dp2 = TrainingMapper(_cfg(("TABLE", "CELL")), 0).map(_sample(0), np.random.RandomState(0))
    assert sorted(dp2[-1].tolist()) == [1] + [2] * 12
    fg = sum(int((dp[1 + 2 * k] == 1).sum()) for k in range(5))
    assert fg > 0


def test_mapper_reproducible_with_given_rng_and_gt_scaled():
    mapper = TrainingMapper(_cfg(), seed=0)
    s = _sample(1)
    a, b = mapper.map(s, np.random.RandomState(3)), mapper.map(s, np.random.RandomState(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # gt boxes are the cell boxes scaled (and maybe mirrored) like the image
    sx = a[0].shape[1] / 200.0
    widths = np.sort(a[-2][:, 2] - a[-2][:, 0])
    np.testing.assert_allclose(widths, np.sort((s["boxes"][1:-1, 2] - s["boxes"][1:-1, 0]) * sx), rtol=1e-4)


def test_mapper_none_without_boxes():
    s = _sample(2)
    s["category_ids"][:] = categories.TABLE
    assert TrainingMapper(_cfg(), 0)(s) is None
    s = _sample(2)
    s["boxes"] = np.zeros((0, 4), np.float32)
    s["category_ids"] = np.zeros((0,), np.int32)
    assert TrainingMapper(_cfg(), 0)(s) is None


def test_mapper_pickles_without_process_state():
    mapper = TrainingMapper(_cfg(), seed=5)
    mapper(_sample(3))
    clone = pickle.loads(pickle.dumps(mapper))
    assert clone._rng is None and clone._grids is None
    _check_datapoint(clone(_sample(3)))


def test_eval_preprocess():
    image, scale = eval_preprocess(_sample(4, h=100, w=160), _cfg())
    assert image.dtype == np.uint8 and image.shape == (800, 1280, 3)
    np.testing.assert_allclose(scale, [8.0, 8.0])


def test_profile_stages():
    out = profile_stages([_sample(k) for k in range(3)], _cfg())
    assert out["samples"] == 3 and out["skipped"] == 0
    assert all(out[k] > 0 for k in ("resize_flip", "matching", "sampling"))
    assert out["total"] >= out["resize_flip"] + out["matching"] + out["sampling"]


def _cache_of(path, samples):
    """A cache holding ``samples`` (sample dicts), written by the cache writer."""
    from ddcache.codec import encode_record

    index = [(1, 1, int((s["category_ids"] == categories.CELL).sum())) for s in samples]
    return write_records(path, [encode_record(s) for s in samples], index)


def test_single_process_dataflow_drops_records_without_trained_boxes(tmp_path):
    from ddcache.source import CacheSource

    bad = _sample(9)
    bad["category_ids"][:] = categories.ROW
    path = _cache_of(tmp_path / "c", [_sample(0), bad, _sample(1)])
    df = build_train_dataflow(CacheSource(path, shuffle=False), _cfg(), num_workers=0)
    df.reset_state()
    out = list(df)
    assert len(out) == 2 and df.dropped == 1
    for dp in out:
        _check_datapoint(dp, n_gt=12)


def test_multiprocess_dataflow_two_workers(tmp_path):
    from ddcache.map_workers import LosslessMapDataZMQ
    from ddcache.source import CacheSource

    path = _cache_of(tmp_path / "c", [_sample(k, cells=5 + k) for k in range(4)])
    df = build_train_dataflow(CacheSource(path, seed=3), _cfg(), num_workers=2, seed=1)
    assert isinstance(df.workers, LosslessMapDataZMQ) and df.workers.num_proc == 2  # REP workers that never drop a reply
    df.reset_state()
    try:
        got = [dp for _ in range(2) for dp in df]  # strict: each pass is one epoch
        procs = list(df.workers._procs)
    finally:
        df.close()
    assert len(procs) == 2 and not any(p.is_alive() for p in procs)
    assert len(got) == 8
    for dp in got:
        _check_datapoint(dp)
    assert sorted(len(dp[-1]) for dp in got) == [5, 5, 6, 6, 7, 7, 8, 8]  # each record once per epoch
    # augmentation really varies across datapoints (seeded per worker process)
    assert len({dp[0].shape for dp in got}) > 1


def test_compact_form_expands_to_the_same_datapoint():
    mapper = TrainingMapper(_cfg(), seed=0)
    s = _sample(6, cells=20)
    full = mapper.map(s, np.random.RandomState(4))
    compact = mapper.map_compact(s, np.random.RandomState(4))
    # uint8 image and only the kept anchors' indices: ~BATCH_PER_IM of them, not one entry per anchor
    assert compact[0].dtype == np.uint8 and compact[1].dtype == compact[3].dtype == np.int32
    assert 0 < len(compact[1]) + len(compact[3]) <= 512
    expanded = expand_compact(pickle.loads(pickle.dumps(compact)))
    assert len(expanded) == len(full)
    for a, b in zip(expanded, full):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


_TRAIN_FROM_RECORDS = """
import itertools, sys
sys.path.insert(0, {tests!r})
import trainer
from tensorpack.dataflow import RepeatedData
from ddcache.errors import CorruptRecordError
from ddcache.source import CacheSource
from test_train_data import _cfg, _check_datapoint
from trainer.train_data import build_train_dataflow

def pipeline(path):
    df = RepeatedData(build_train_dataflow(CacheSource(path, check=False, shuffle=False), _cfg(), num_workers=2,
                                           seed=0), -1)
    df.reset_state()
    return df

good = list(itertools.islice(pipeline({good!r}), 10))  # endless stream: take a bit more than one epoch
for dp in good:
    _check_datapoint(dp)
assert len(good) == 10 and {{len(dp[-1]) for dp in good}} == {{12}}, [len(dp[-1]) for dp in good]
try:
    list(itertools.islice(pipeline({bad!r}), 40))
    sys.exit("no error raised")
except CorruptRecordError as exc:
    assert exc.key == {key!r}, exc.key
print("TRAIN-FROM-RECORDS-OK", flush=True)
"""


def test_map_workers_decode_records_and_report_a_corrupt_one(tmp_path):
    """ddtrain's pipeline: encoded records go to the map workers, which decode them; a record that
    does not decode stops training with CorruptRecordError naming its key (not a dead worker and a hang)."""
    good = make_cache(tmp_path / "good", 6, rows=lambda i: 3, cols=lambda i: 4)
    bad = make_cache(tmp_path / "bad", 8, rows=lambda i: 3, cols=lambda i: 4)
    key = corrupt_record(bad, 5)
    code = _TRAIN_FROM_RECORDS.format(tests=os.path.dirname(__file__), good=str(good), bad=str(bad), key=key)
    ok, out = run_until_marker(code, "TRAIN-FROM-RECORDS-OK", timeout=180)
    assert ok, out[-2000:]


def test_single_process_dataflow_decodes_records_and_names_a_corrupt_one(tmp_path):
    from ddcache.errors import CorruptRecordError
    from ddcache.source import CacheSource

    path = make_cache(tmp_path / "c", 3, rows=lambda i: 3, cols=lambda i: 4)
    df = build_train_dataflow(CacheSource(path, shuffle=False), _cfg(), num_workers=0)
    df.reset_state()
    got = list(df)
    assert len(got) == 3
    for dp in got:
        _check_datapoint(dp, n_gt=12)
    bad = make_cache(tmp_path / "bad", 3, rows=lambda i: 3, cols=lambda i: 4)
    key = corrupt_record(bad, 1)
    unchecked = build_train_dataflow(CacheSource(bad, check=False), _cfg(), num_workers=0)
    unchecked.reset_state()
    with pytest.raises(CorruptRecordError) as err:
        list(unchecked)
    assert err.value.key == key
