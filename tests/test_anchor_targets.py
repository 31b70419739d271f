"""RPN anchor targets: label values, sampling budget, best-anchor rule, boxes, shapes."""
import types

import numpy as np

import trainer  # noqa: F401
from trainer.anchor_targets import AnchorGrids, RPNTargetParams, rpn_targets
from trainer.anchors import feature_shape, level_anchors
from trainer.matcher import grid_valid_mask, iou_matrix, labels_from_match, match_naive

NS = types.SimpleNamespace


def _cfg(batch=512, fg_ratio=0.5, rule="reference"):
    return NS(FPN=NS(ANCHOR_STRIDES=(4, 8, 16, 32, 64), RESOLUTION_REQUIREMENT=32),
              RPN=NS(ANCHOR_SIZES=(8, 16, 32, 64, 128), ANCHOR_RATIOS=(0.25, 0.5, 1.0),
                     POSITIVE_ANCHOR_THRESH=0.7, NEGATIVE_ANCHOR_THRESH=0.3,
                     BATCH_PER_IM=batch, FG_RATIO=fg_ratio, CROWD_OVERLAP_THRESH=9.99,
                     BEST_ANCHOR_RULE=rule))


def _cells(rng, m, h, w):
    x, y = rng.uniform(0, w - 120, m), rng.uniform(0, h - 25, m)
    return np.stack([x, y, x + rng.uniform(6, 120, m), y + rng.uniform(5, 25, m)], 1).astype(np.float32)


def _flat(targets):
    labels = np.concatenate([lab.reshape(-1) for lab, _ in targets])
    boxes = np.concatenate([box.reshape(-1, 4) for _, box in targets])
    return labels, boxes


def test_shapes_dtypes_and_sampling_budget():
    rng = np.random.RandomState(0)
    h, w = 421, 613  # not multiples of 32: padding adds ignored anchors
    grids = AnchorGrids(RPNTargetParams.from_cfg(_cfg()))
    gt = _cells(rng, 300, h, w)
    targets = rpn_targets((h, w), gt, grids, rng)
    assert len(targets) == 5
    for (lab, box), stride in zip(targets, (4, 8, 16, 32, 64)):
        fh, fw = feature_shape(h, w, stride)
        assert lab.shape == (fh, fw, 3) and lab.dtype == np.int32
        assert box.shape == (fh, fw, 3, 4) and box.dtype == np.float32
    labels, boxes = _flat(targets)
    assert set(np.unique(labels)) == {-1, 0, 1}
    assert (labels == 1).sum() == 256  # 300 cells give more fg than the budget: exactly the cap
    assert (labels >= 0).sum() == 512
    # fg boxes are gt boxes (their argmax gt), every other box is zero
    assert (boxes[labels != 1] == 0).all()
    gt_rows = {tuple(b) for b in gt.tolist()}
    assert all(tuple(b) in gt_rows for b in boxes[labels == 1].tolist())


def test_fg_boxes_are_the_matched_gt_and_outside_anchors_ignored():
    rng = np.random.RandomState(1)
    h, w = 300, 400
    grids = AnchorGrids(RPNTargetParams.from_cfg(_cfg()))
    gt = _cells(rng, 20, h, w)
    labels, boxes = _flat(rpn_targets((h, w), gt, grids, rng))
    flat = np.concatenate([g.reshape(-1, 4) for g in grids.levels(h, w)])
    fg = np.flatnonzero(labels == 1)
    assert len(fg) > 0
    ious = iou_matrix(flat[fg], gt)
    assert np.array_equal(boxes[fg], gt[ious.argmax(axis=1)])
    outside = ~grid_valid_mask(grids.levels(h, w), (h, w))
    assert outside.any() and (labels[outside] == -1).all()


def _thin_cells_case():
    rng = np.random.RandomState(2)
    h, w = 256, 320
    # thin, tiny and ordinary cells: several have best IoU < 0.3
    gt = np.concatenate([_cells(rng, 30, h, w), [[10, 10, 13, 12], [50, 200, 250, 204], [300, 5, 318, 9]]]).astype(np.float32)
    return rng, h, w, gt


def test_always_positive_rule_gives_every_overlapped_gt_a_fg_anchor():
    rng, h, w, gt = _thin_cells_case()
    grids = AnchorGrids(RPNTargetParams.from_cfg(_cfg(rule="always_positive")))
    levels = grids.levels(h, w)
    flat = np.concatenate([g.reshape(-1, 4) for g in levels])
    valid = grid_valid_mask(levels, (h, w))
    ious = iou_matrix(flat[valid], gt)
    overlapped = ious.max(axis=0) > 0
    assert (ious.max(axis=0)[overlapped] < 0.3).any()  # the rule is actually exercised
    # before subsampling
    labels = labels_from_match(match_naive(flat, gt, valid), 0.7, 0.3, "always_positive")
    for g in np.flatnonzero(overlapped):
        assert (labels[valid][ious[:, g] == ious[:, g].max()] == 1).all()
    # after subsampling: 33 gts stay below the fg budget, nothing is dropped
    final, _ = _flat(rpn_targets((h, w), gt, grids, rng))
    fg = final[valid] == 1
    for g in np.flatnonzero(overlapped):
        assert fg[ious[:, g] > 0].any()


def test_reference_rule_makes_a_best_anchor_below_the_negative_threshold_bg():
    """tensorpack's order: best anchors -> fg, >= 0.7 -> fg, then < 0.3 -> bg (the bg rule wins)."""
    _, h, w, gt = _thin_cells_case()
    levels = AnchorGrids(RPNTargetParams.from_cfg(_cfg())).levels(h, w)
    flat = np.concatenate([g.reshape(-1, 4) for g in levels])
    valid = grid_valid_mask(levels, (h, w))
    match = match_naive(flat, gt, valid)
    labels = labels_from_match(match, 0.7, 0.3)
    weak_best = match.is_gt_best & (match.max_iou < 0.3)
    assert weak_best.any()  # exercised: some gt's best anchors reach only IoU < 0.3
    assert (labels[weak_best] == 0).all()
    strong_best = match.is_gt_best & (match.max_iou >= 0.3)
    assert strong_best.any() and (labels[strong_best] == 1).all()
    assert (labels[valid & (match.max_iou >= 0.7)] == 1).all()


def test_reference_rule_with_a_gt_that_overlaps_no_anchor():
    """The reference marks every anchor as 'best' of such a gt: all anchors in [0.3, 0.7) become fg."""
    levels = AnchorGrids(RPNTargetParams.from_cfg(_cfg())).levels(128, 128)
    flat = np.concatenate([g.reshape(-1, 4) for g in levels])
    valid = grid_valid_mask(levels, (128, 128))
    gt = np.array([[20, 20, 70, 60], [130, 0, 140, 10]], np.float32)  # the second overlaps no inside anchor
    match = match_naive(flat, gt, valid)
    assert match.unmatched_gt and match.gt_best[1] == 0
    labels = labels_from_match(match, 0.7, 0.3)
    assert np.array_equal(labels[valid] == 1, match.max_iou[valid] >= 0.3)
    assert not match_naive(flat, gt[:1], valid).unmatched_gt


def test_thresholds():
    rng = np.random.RandomState(3)
    h, w = 200, 240
    grids = AnchorGrids(RPNTargetParams.from_cfg(_cfg(batch=10**7)))  # no subsampling
    gt = _cells(rng, 15, h, w)
    labels, _ = _flat(rpn_targets((h, w), gt, grids, rng))
    levels = grids.levels(h, w)
    m = match_naive(np.concatenate([g.reshape(-1, 4) for g in levels]), gt, grid_valid_mask(levels, (h, w)))
    valid = m.max_iou >= 0
    assert (labels[valid & (m.max_iou >= 0.7)] == 1).all()
    assert (labels[valid & (m.max_iou < 0.3) & ~m.is_gt_best] == 0).all()
    assert (labels[valid & (m.max_iou >= 0.3) & (m.max_iou < 0.7) & ~m.is_gt_best] == -1).all()


def test_no_gt_and_reproducible():
    grids = AnchorGrids(RPNTargetParams.from_cfg(_cfg()))
    labels, boxes = _flat(rpn_targets((100, 150), np.zeros((0, 4), np.float32), grids, np.random.RandomState(0)))
    assert (labels == 1).sum() == 0 and (labels == 0).sum() == 512 and (boxes == 0).all()
    gt = _cells(np.random.RandomState(4), 50, 300, 300)
    a = _flat(rpn_targets((300, 300), gt, grids, np.random.RandomState(9)))[0]
    b = _flat(rpn_targets((300, 300), gt, grids, np.random.RandomState(9)))[0]
    c = _flat(rpn_targets((300, 300), gt, grids, np.random.RandomState(10)))[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_anchor_grid_cache_slices_equal_fresh_anchors():
    grids = AnchorGrids(RPNTargetParams.from_cfg(_cfg()))
    grids.levels(700, 900)
    for lvl, s, z in zip(grids.levels(333, 517), (4, 8, 16, 32, 64), (8, 16, 32, 64, 128)):
        assert np.array_equal(lvl, level_anchors(s, z, (0.25, 0.5, 1.0), *feature_shape(333, 517, s)))
