"""Anchor ↔ ground-truth matching by IoU: the naive matrix and an exact grid-window matcher.

Both matchers produce the same :class:`Match`, bit for bit:

- ``max_iou``  float32 ``[N]``: per anchor, its best IoU over the gt boxes
  (0 when there are no gts; ``-1`` for anchors excluded by ``valid``);
- ``argmax``   int64 ``[N]``: per anchor, the index of that best gt, the lowest
  index among ties (so 0 when the anchor overlaps nothing, as ``np.argmax``);
  ``-1`` for excluded anchors or when there are no gts;
- ``gt_best``  float32 ``[M]``: per gt, its best IoU over the valid anchors;
- ``is_gt_best`` bool ``[N]``: the anchor attains the best IoU of at least one
  gt whose best IoU is > 0 (ties included). Gts overlapping no valid anchor
  select nothing (otherwise every anchor would "tie" at IoU 0).

Boxes are xyxy in image pixels (any consistent unit). A gt box with zero or
negative width/height has IoU 0 with everything; its area counts as 0.

Why a second matcher: a 1408x1000 table crop has ~300K anchors over P2-P6 and
hundreds of cell boxes, so the full ``[N, M]`` IoU matrix costs ~10^8 pairs per
image. Anchors of one FPN level and one ratio sit on a regular grid with a
fixed size, and the intersection width of a box with an anchor depends only
on the anchor's column (height only on its row): each gt overlaps a contiguous
window of columns times a contiguous window of rows, found by binary search.
:func:`match_grid` computes IoUs only inside these windows (vectorised over all
gts at once), with the same float32 expression as :func:`iou_matrix`, so the
results are identical, not approximately equal.
"""
from collections import namedtuple

import numpy as np

Match = namedtuple("Match", ["max_iou", "argmax", "gt_best", "is_gt_best"])

# Anchor rows per chunk of the naive matrix: bounds its memory to ~chunk*M*4 bytes
# per temporary; results do not depend on it.
_NAIVE_CHUNK = 8192


def _iou(ax1, ay1, ax2, ay2, a_area, gx1, gy1, gx2, gy2, g_area):
    """IoU of broadcastable float32 coordinate arrays; THE single formula both matchers use."""
    iw = np.maximum(np.minimum(ax2, gx2) - np.maximum(ax1, gx1), np.float32(0))
    ih = np.maximum(np.minimum(ay2, gy2) - np.maximum(ay1, gy1), np.float32(0))
    inter = iw * ih
    return inter / (a_area + g_area - inter)


def box_area(boxes):
    """Area of xyxy boxes, float32 ``[N]``; degenerate boxes (w<=0 or h<=0) count 0."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    w = np.maximum(boxes[:, 2] - boxes[:, 0], np.float32(0))
    h = np.maximum(boxes[:, 3] - boxes[:, 1], np.float32(0))
    return w * h


def inside_mask(anchors, image_h, image_w):
    """bool ``[N]``: anchors (float32 ``[N, 4]`` xyxy) lying fully inside an image of ``image_h x image_w`` pixels."""
    a = np.asarray(anchors, dtype=np.float32).reshape(-1, 4)
    return (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 2] <= image_w) & (a[:, 3] <= image_h)


def iou_matrix(anchors, gt_boxes):
    """Full IoU matrix float32 ``[N, M]`` of anchors ``[N, 4]`` (positive size) and gt boxes ``[M, 4]``, xyxy."""
    a = np.asarray(anchors, dtype=np.float32).reshape(-1, 4)
    g = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    a_area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    return _iou(a[:, 0:1], a[:, 1:2], a[:, 2:3], a[:, 3:4], a_area[:, None],
                g[None, :, 0], g[None, :, 1], g[None, :, 2], g[None, :, 3], box_area(g)[None, :])


def match_naive(anchors, gt_boxes, valid=None):
    """Reference matcher over the full IoU matrix (chunked over anchors to bound memory).

    Args:
        anchors: float32 ``[N, 4]`` xyxy.
        gt_boxes: float32 ``[M, 4]`` xyxy.
        valid: optional bool ``[N]``; anchors outside it take part in nothing.
    Returns:
        :class:`Match` (see module docstring).
    """
    a = np.asarray(anchors, dtype=np.float32).reshape(-1, 4)
    g = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    n, m = len(a), len(g)
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    max_iou = np.full(n, -1, dtype=np.float32)
    argmax = np.full(n, -1, dtype=np.int64)
    gt_best = np.zeros(m, dtype=np.float32)
    is_gt_best = np.zeros(n, dtype=bool)
    idx = np.flatnonzero(valid)
    if m == 0:
        max_iou[idx] = 0
        return Match(max_iou, argmax, gt_best, is_gt_best)
    # Two passes: gt_best needs every chunk before ties can be found.
    for s in range(0, len(idx), _NAIVE_CHUNK):
        ious = iou_matrix(a[idx[s:s + _NAIVE_CHUNK]], g)
        rows = idx[s:s + _NAIVE_CHUNK]
        argmax[rows] = ious.argmax(axis=1)
        max_iou[rows] = ious.max(axis=1)
        np.maximum(gt_best, ious.max(axis=0), out=gt_best)
    for s in range(0, len(idx), _NAIVE_CHUNK):
        ious = iou_matrix(a[idx[s:s + _NAIVE_CHUNK]], g)
        hit = (ious == gt_best[None, :]) & (gt_best[None, :] > 0)
        is_gt_best[idx[s:s + _NAIVE_CHUNK]] = hit.any(axis=1)
    return Match(max_iou, argmax, gt_best, is_gt_best)


def _grid_axis(lvl, axis, a):
    """1-D anchor coordinates of ratio ``a`` along one axis of a level grid ``[fh, fw, A, 4]``.

    Returns (lo, hi) float32 arrays: x1/x2 per column (axis=1) or y1/y2 per row
    (axis=0). Taken from the anchor array itself so values equal the flat ones.
    """
    if axis == 1:
        return lvl[0, :, a, 0], lvl[0, :, a, 2]
    return lvl[:, 0, a, 1], lvl[:, 0, a, 3]


def _windows(lo, hi, g_lo, g_hi, v_lo, v_hi):
    """Per gt, the half-open index window [start, stop) of grid positions with positive overlap.

    Overlap along an axis is positive iff ``hi > g_lo`` and ``lo < g_hi`` (float
    subtraction keeps the sign of the comparison); ``lo``/``hi`` are
    non-decreasing along the grid. The window is clipped to the valid range
    [v_lo, v_hi).
    """
    start = np.searchsorted(hi, g_lo, side="right")
    stop = np.searchsorted(lo, g_hi, side="left")
    start = np.maximum(start, v_lo)
    stop = np.minimum(stop, v_hi)
    return start, np.maximum(stop, start)


def _valid_range(lo, hi, limit):
    """[first, stop) of grid positions whose anchor lies within [0, limit] on this axis (a contiguous range)."""
    ok = np.flatnonzero((lo >= 0) & (hi <= limit))
    if len(ok) == 0:
        return 0, 0
    # Monotone coordinates make the inside positions contiguous; checked, not assumed.
    assert ok[-1] - ok[0] + 1 == len(ok)
    return int(ok[0]), int(ok[-1]) + 1


def grid_valid_mask(level_grids, image_hw=None):
    """bool ``[N]`` over the concatenated levels: anchors fully inside ``image_hw`` (all True if None)."""
    flat = np.concatenate([lvl.reshape(-1, 4) for lvl in level_grids], axis=0)
    if image_hw is None:
        return np.ones(len(flat), dtype=bool)
    return inside_mask(flat, image_hw[0], image_hw[1])


def match_grid(level_grids, gt_boxes, image_hw=None):
    """Exact fast matcher for grid-structured anchors.

    Args:
        level_grids: list of float32 ``[fh, fw, A, 4]`` arrays as produced by
            ``trainer.anchors.level_anchors`` (x depends only on the column, y
            only on the row, coordinates non-decreasing along the grid). The
            flat anchor order is the concatenation of ``lvl.reshape(-1, 4)``.
        gt_boxes: float32 ``[M, 4]`` xyxy.
        image_hw: optional (height, width) in pixels; when given, only anchors
            fully inside ``[0, w] x [0, h]`` are valid (others get -1), exactly
            like ``match_naive(..., valid=inside_mask(...))``.
    Returns:
        :class:`Match`, identical to :func:`match_naive` on the flat anchors.
    """
    g = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    m = len(g)
    sizes = [lvl.shape[0] * lvl.shape[1] * lvl.shape[2] for lvl in level_grids]
    n = int(sum(sizes))
    max_iou = np.full(n, -1, dtype=np.float32)
    argmax = np.full(n, -1, dtype=np.int64)
    gt_best = np.zeros(m, dtype=np.float32)
    is_gt_best = np.zeros(n, dtype=bool)

    g_area = box_area(g)
    # Degenerate gts overlap nothing (IoU 0 everywhere); leaving them out keeps every
    # in-window pair strictly positive.
    live = np.flatnonzero((g[:, 2] > g[:, 0]) & (g[:, 3] > g[:, 1])) if m else np.zeros(0, np.int64)
    gl = g[live]

    pair_anchor, pair_gt, pair_iou = [], [], []
    offset = 0
    for lvl, size in zip(level_grids, sizes):
        fh, fw, na = lvl.shape[:3]
        for a in range(na):
            xlo, xhi = _grid_axis(lvl, 1, a)
            ylo, yhi = _grid_axis(lvl, 0, a)
            if image_hw is None:
                (vx0, vx1), (vy0, vy1) = (0, fw), (0, fh)
            else:
                vx0, vx1 = _valid_range(xlo, xhi, image_hw[1])
                vy0, vy1 = _valid_range(ylo, yhi, image_hw[0])
            # Valid anchors of this (level, ratio) start at IoU 0 (argmax 0 if any gt);
            # they form the rectangle [vy0, vy1) x [vx0, vx1) of the grid.
            max_iou[offset:offset + size].reshape(fh, fw, na)[vy0:vy1, vx0:vx1, a] = 0
            if m:
                argmax[offset:offset + size].reshape(fh, fw, na)[vy0:vy1, vx0:vx1, a] = 0
            if len(gl) == 0 or vx1 <= vx0 or vy1 <= vy0:
                continue
            c0, c1 = _windows(xlo, xhi, gl[:, 0], gl[:, 2], vx0, vx1)
            r0, r1 = _windows(ylo, yhi, gl[:, 1], gl[:, 3], vy0, vy1)
            nc, nr = c1 - c0, r1 - r0
            counts = nc * nr
            total = int(counts.sum())
            if total == 0:
                continue
            # Ragged expansion: pair k of gt t is (row r0 + k // nc, col c0 + k % nc).
            t = np.repeat(np.arange(len(gl)), counts)
            starts = np.cumsum(counts) - counts
            k = np.arange(total) - np.repeat(starts, counts)
            dr, dc = np.divmod(k, nc[t])
            r = r0[t] + dr
            c = c0[t] + dc
            ax1, ax2 = xlo[c], xhi[c]
            ay1, ay2 = ylo[r], yhi[r]
            # Same expression as iou_matrix: anchor area is (x2-x1)*(y2-y1) of this anchor.
            a_area = (ax2 - ax1) * (ay2 - ay1)
            gi = live[t]
            ious = _iou(ax1, ay1, ax2, ay2, a_area, g[gi, 0], g[gi, 1], g[gi, 2], g[gi, 3], g_area[gi])
            pair_anchor.append(offset + (r * fw + c) * na + a)
            pair_gt.append(gi)
            pair_iou.append(ious)
        offset += size

    if not pair_iou:
        return Match(max_iou, argmax, gt_best, is_gt_best)
    pa = np.concatenate(pair_anchor)
    pg = np.concatenate(pair_gt)
    pi = np.concatenate(pair_iou)
    # Only strictly positive IoUs can change a max or an argmax (ties at 0 go to gt 0).
    pos = pi > 0
    pa, pg, pi = pa[pos], pg[pos], pi[pos]
    np.maximum.at(max_iou, pa, pi)
    np.maximum.at(gt_best, pg, pi)
    # Lowest gt index among the anchor's tied best ones, as np.argmax does.
    at_max = pi == max_iou[pa]
    best_a, best_g = pa[at_max], pg[at_max]
    first = np.full(n, m, dtype=np.int64)
    np.minimum.at(first, best_a, best_g)
    argmax[best_a] = first[best_a]
    is_gt_best[pa[pi == gt_best[pg]]] = True
    return Match(max_iou, argmax, gt_best, is_gt_best)
