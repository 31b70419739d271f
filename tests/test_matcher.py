"""The grid labeller must give exactly the labels of the naive IoU matrix, including ties and edge cases."""
import numpy as np
import pytest

import trainer  # noqa: F401
from trainer.anchors import feature_shape, level_anchors
from trainer.anchor_targets import _sample_bg
from trainer.matcher import (BEST_ANCHOR_RULES, anchors_at, best_gt, grid_valid_mask, iou_matrix, label_grid,
                             labels_from_match, match_naive)

STRIDES, SIZES, RATIOS = (4, 8, 16, 32, 64), (8, 16, 32, 64, 128), (0.25, 0.5, 1.0)


def _grids(h, w, strides=STRIDES, sizes=SIZES, ratios=RATIOS):
    return [level_anchors(s, z, ratios, *feature_shape(h, w, s)) for s, z in zip(strides, sizes)]


THRESHOLDS = ((0.7, 0.3), (0.5, 0.4), (0.3, 0.3), (0.6, 0.0))


def _assert_same(grids, gt, image_hw):
    """Grid labels == naive labels for several threshold pairs; returns (naive Match, GridLabels at 0.7/0.3)."""
    flat = np.concatenate([g.reshape(-1, 4) for g in grids])
    valid = grid_valid_mask(grids, image_hw)
    naive = match_naive(flat, gt, valid)
    for (pos, neg), rule in [(t, r) for t in THRESHOLDS for r in BEST_ANCHOR_RULES]:
        fast = label_grid(grids, STRIDES, gt, image_hw, pos, neg, rule)
        ref = labels_from_match(naive, pos, neg, rule)
        assert np.array_equal(fast.dense(), ref), (pos, neg, rule)
        assert fast.num_bg == (ref == 0).sum() and fast.num_valid == valid.sum()
        # the kept fg anchors' gt: the naive argmax (lowest index among ties)
        if len(fast.fg):
            assert np.array_equal(best_gt(anchors_at(grids, fast.fg), gt), naive.argmax[fast.fg])
    return naive, label_grid(grids, STRIDES, gt, image_hw, 0.7, 0.3)


def test_iou_matrix_known_values():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]], np.float32)
    g = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 5, 10], [3, 3, 3, 8]], np.float32)
    ious = iou_matrix(a, g)
    np.testing.assert_allclose(ious[0], [1.0, 0.0, 0.5, 0.0])
    np.testing.assert_allclose(ious[1], [25 / 175, 25 / 175, 0.0, 0.0])


@pytest.mark.parametrize("seed", range(6))
def test_random_table_like_boxes(seed):
    rng = np.random.RandomState(seed)
    h, w = rng.randint(150, 400), rng.randint(150, 400)
    m = rng.randint(1, 60)
    x, y = rng.uniform(-30, w + 10, m), rng.uniform(-30, h + 10, m)
    bw, bh = rng.uniform(0.5, 150, m), rng.uniform(0.5, 40, m)
    gt = np.stack([x, y, x + bw, y + bh], 1).astype(np.float32)
    naive, labels = _assert_same(_grids(h, w), gt, (h, w))
    assert (naive.max_iou > 0).any() and len(labels.fg) > 0  # the case is not trivially empty


def test_ties_degenerate_outside_and_duplicates():
    h, w = 128, 160
    grids = _grids(h, w)
    anchor = grids[0][10, 12, 2]  # an exact anchor of level 2, ratio 1 (IoU 1 with it)
    gt = np.array([
        anchor, anchor,                  # duplicate gts: ties across gts -> lowest index
        [40, 40, 48, 48],                # grid-aligned: many anchors tie for its best
        [30, 30, 30, 50],                # zero width
        [60, 60, 50, 70],                # negative width
        [-50, -50, -10, -10],            # fully outside the image
        [150, 100, 400, 300],            # partly outside
        [0, 0, w, h],                    # whole image
    ], np.float32)
    out, labels = _assert_same(grids, gt, (h, w))
    assert out.gt_best[3] == 0 and out.gt_best[4] == 0 and out.gt_best[5] == 0
    assert out.gt_best[0] == 1.0
    flat_index = (10 * grids[0].shape[1] + 12) * 3 + 2
    assert out.argmax[flat_index] == 0 and out.max_iou[flat_index] == 1.0
    assert flat_index in labels.fg and best_gt(anchors_at(grids, [flat_index]), gt)[0] == 0


def test_exact_ties_between_neighbouring_anchors():
    # A box centred between two anchor centres has equal IoU with both: both are "best".
    grids = _grids(64, 64)
    gt = np.array([[12, 2, 20, 10]], np.float32)  # 8x8, centre x=16 between level-2 centres 14 and 18
    out, labels = _assert_same(grids, gt, (64, 64))
    assert out.is_gt_best.sum() == 2
    np.testing.assert_allclose(out.gt_best, [48 / 80])
    assert np.array_equal(labels.fg, np.flatnonzero(out.is_gt_best))  # best IoU 0.6 < 0.7: only the two ties


def test_no_gt_and_no_valid_anchor():
    grids = _grids(96, 96)
    out, labels = _assert_same(grids, np.zeros((0, 4), np.float32), (96, 96))
    assert (out.argmax == -1).all() and set(np.unique(out.max_iou)) <= {-1.0, 0.0}
    assert len(labels.fg) == 0 and labels.num_bg == labels.num_valid > 0
    # An image smaller than the biggest anchors: those levels have no valid anchor.
    out, labels = _assert_same(_grids(20, 20), np.array([[2, 2, 12, 9]], np.float32), (20, 20))
    assert (out.max_iou >= 0).sum() > 0 and len(labels.fg) > 0


def test_without_image_restriction():
    grids = _grids(64, 96)
    gt = np.array([[-4, -4, 20, 6], [50, 30, 90, 60]], np.float32)
    out, labels = _assert_same(grids, gt, None)
    assert (out.max_iou >= 0).all() and labels.num_valid == labels.n


def test_other_anchor_configs():
    rng = np.random.RandomState(11)
    grids = _grids(200, 260, sizes=(16, 32, 64, 128, 256), ratios=(0.1, 0.5, 1.5))
    x, y = rng.uniform(0, 250, 40), rng.uniform(0, 190, 40)
    gt = np.stack([x, y, x + rng.uniform(1, 200, 40), y + rng.uniform(1, 30, 40)], 1).astype(np.float32)
    _assert_same(grids, gt, (200, 260))


def test_grid_snapped_boxes_with_many_ties():
    # Boxes on a 2-px lattice coincide with anchors or sit halfway between them: many exact ties.
    rng = np.random.RandomState(21)
    h, w = 160, 224
    xy = rng.randint(0, 100, (80, 2)) * 2
    wh = rng.choice([4, 8, 16, 32, 64], (80, 2))
    gt = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    gt = np.concatenate([gt, gt[:10]])  # exact duplicates too
    out, _ = _assert_same(_grids(h, w), gt, (h, w))
    assert (out.gt_best == 1.0).any() and out.is_gt_best.sum() > len(gt)


def test_realistic_table_size():
    rng = np.random.RandomState(5)
    h, w = 600, 900
    m = 300
    x, y = rng.uniform(0, w - 100, m), rng.uniform(0, h - 20, m)
    gt = np.stack([x, y, x + rng.uniform(8, 100, m), y + rng.uniform(6, 20, m)], 1).astype(np.float32)
    _assert_same(_grids(h, w), gt, (h, w))


def test_valid_anchors_by_rank_cover_every_valid_anchor_once():
    grids = _grids(150, 210)
    labels = label_grid(grids, STRIDES, np.array([[10, 10, 60, 30]], np.float32), (150, 210), 0.7, 0.3)
    flat = labels.valid_at(np.arange(labels.num_valid))
    assert np.array_equal(np.sort(flat), np.flatnonzero(grid_valid_mask(grids, (150, 210))))


def test_background_sampling_is_uniform_over_bg_anchors_only():
    grids = _grids(96, 128)
    rng = np.random.RandomState(0)
    gt = np.array([[10, 10, 50, 30], [60, 40, 120, 70]], np.float32)
    labels = label_grid(grids, STRIDES, gt, (96, 128), 0.7, 0.3)
    dense = labels.dense()
    bg = np.flatnonzero(dense == 0)
    counts = np.zeros(len(dense), np.int64)
    for _ in range(400):
        picked = _sample_bg(labels, 64, rng)
        assert len(picked) == 64 and len(np.unique(picked)) == 64 and np.all(np.diff(picked) > 0)
        assert (dense[picked] == 0).all()
        counts[picked] += 1
    # Uniform over bg: Pearson's chi-square of the counts stays near its degrees of freedom
    # (mean df, sd sqrt(2 df)); a sampler favouring a level or a region lands far off.
    expected = 400 * 64 / len(bg)
    chi2 = (((counts[bg] - expected) ** 2) / expected).sum()
    df = len(bg) - 1
    assert abs(chi2 - df) < 6 * np.sqrt(2 * df), (chi2, df)
    assert counts.sum() == counts[bg].sum()
    # asking for more than there are returns all of them
    assert np.array_equal(_sample_bg(labels, len(bg) + 5, rng), bg)


def test_strides_must_match_the_grids():
    with pytest.raises(ValueError, match="strides"):
        label_grid(_grids(64, 64), (8, 16, 32, 64, 128), np.array([[1, 1, 9, 9]], np.float32), (64, 64), 0.7, 0.3)
