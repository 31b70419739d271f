"""Anchor <-> ground-truth matching by IoU for RPN labels: the naive matrix (reference) and an exact grid labeller.

The reference, :func:`match_naive`, returns a :class:`Match`:

- ``max_iou``  float32 ``[N]``: per anchor, its best IoU over the gt boxes
  (0 when there are no gts; ``-1`` for anchors excluded by ``valid``);
- ``argmax``   int64 ``[N]``: per anchor, the index of that best gt, the lowest
  index among ties (so 0 when the anchor overlaps nothing, as ``np.argmax``);
  ``-1`` for excluded anchors or when there are no gts;
- ``gt_best``  float32 ``[M]``: per gt, its best IoU over the valid anchors;
- ``is_gt_best`` bool ``[N]``: the anchor attains the best IoU of at least one
  gt whose best IoU is > 0 (ties included);
- ``unmatched_gt`` bool: some (non-degenerate) gt overlaps no valid anchor at
  all (its best IoU is 0: in the reference every anchor then "ties" for it);

and :func:`labels_from_match` turns it into RPN labels (the rules' one definition).

IoUs are the reference's: tensorpack labels anchors with pycocotools' ``iou``
on boxes converted to float32 ``(x, y, w, h)``, computed in float64 and
rounded to float32 -- :func:`_iou` reproduces that arithmetic, so thresholds
and ties decide exactly as there. Boxes are xyxy in image pixels (any
consistent unit). A gt box with zero or negative width/height has IoU 0 with
everything and takes no part in "best anchor" rules (the reference refuses
such boxes earlier, ddcache's pipeline drops them).

Why a second way: a 1408x1000 table crop has ~300K anchors over P2-P6 and
hundreds of cell boxes, so the full ``[N, M]`` IoU matrix costs ~10^8 pairs per
image. Training needs labels, not the matrix: :func:`label_grid` uses the
regular grid of each (level, ratio) and a per-gt IoU threshold below which a
pair cannot change a label, so it evaluates only a small window of anchors per
gt (see its docstring). Its labels (:class:`GridLabels`) equal
``labels_from_match(match_naive(...))`` exactly: inside the windows it uses the
same float32 expression as :func:`iou_matrix`. The gt of each kept fg anchor is
then an exact argmax over all gts for those few anchors (:func:`best_gt`).
"""
from collections import namedtuple

import numpy as np

Match = namedtuple("Match", ["max_iou", "argmax", "gt_best", "is_gt_best", "unmatched_gt"])

# RPN.BEST_ANCHOR_RULE values. "reference": tensorpack's order -- best anchors of each gt set fg, then anchors
# >= POSITIVE fg, then anchors < NEGATIVE bg (a gt's best anchor below NEGATIVE ends up bg, and a gt that overlaps no
# anchor makes every anchor in [NEGATIVE, POSITIVE) fg). "always_positive": a gt's best anchors are fg whatever their
# IoU, applied last (detectron2's low-quality matches; thin table cells keep a positive anchor).
REFERENCE_RULE = "reference"
ALWAYS_POSITIVE_RULE = "always_positive"
BEST_ANCHOR_RULES = (REFERENCE_RULE, ALWAYS_POSITIVE_RULE)

# Anchor rows per chunk of the naive matrix: bounds its memory to ~chunk*M*4 bytes
# per temporary; results do not depend on it.
_NAIVE_CHUNK = 8192


def coco_form(boxes):
    """xyxy float32 ``[..., 4]`` -> (x0, y0, x1, y1, w, h) float64 as pycocotools sees them.

    The reference converts to float32 ``(x, y, w, h)`` first (``w = x1 - x0``
    in float32), pycocotools then works in float64 with ``x1 = x + w``.
    """
    b = np.asarray(boxes, dtype=np.float32)
    w = (b[..., 2] - b[..., 0]).astype(np.float64)
    h = (b[..., 3] - b[..., 1]).astype(np.float64)
    x0, y0 = b[..., 0].astype(np.float64), b[..., 1].astype(np.float64)
    return x0, y0, x0 + w, y0 + h, w, h


def _overlap(a_lo, a_hi, g_lo, g_hi):
    """1-D overlap (float64, >= 0) of broadcastable intervals."""
    return np.maximum(np.minimum(a_hi, g_hi) - np.maximum(a_lo, g_lo), 0.0)


def _iou(iw, ih, a_area, g_area):
    """IoU from overlaps and areas (float64), rounded to float32: THE single formula both matchers use."""
    inter = iw * ih
    return (inter / (a_area + g_area - inter)).astype(np.float32)


def box_area(boxes):
    """Area of xyxy boxes, float64 ``[N]`` (pycocotools' w * h of the float32 sizes); degenerate boxes count 0."""
    *_, w, h = coco_form(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    return np.maximum(w, 0.0) * np.maximum(h, 0.0)


def inside_mask(anchors, image_h, image_w):
    """bool ``[N]``: anchors (float32 ``[N, 4]`` xyxy) lying fully inside an image of ``image_h x image_w`` pixels."""
    a = np.asarray(anchors, dtype=np.float32).reshape(-1, 4)
    return (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 2] <= image_w) & (a[:, 3] <= image_h)


def iou_matrix(anchors, gt_boxes):
    """Full IoU matrix float32 ``[N, M]`` of anchors ``[N, 4]`` (positive size) and gt boxes ``[M, 4]``, xyxy."""
    ax0, ay0, ax1, ay1, aw, ah = (c[:, None] for c in coco_form(np.asarray(anchors, np.float32).reshape(-1, 4)))
    gx0, gy0, gx1, gy1, _, _ = (c[None, :] for c in coco_form(np.asarray(gt_boxes, np.float32).reshape(-1, 4)))
    return _iou(_overlap(ax0, ax1, gx0, gx1), _overlap(ay0, ay1, gy0, gy1), aw * ah, box_area(gt_boxes)[None, :])


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
        return Match(max_iou, argmax, gt_best, is_gt_best, False)
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
    live = (g[:, 2] > g[:, 0]) & (g[:, 3] > g[:, 1])
    unmatched = bool(len(idx) and np.any(live & (gt_best == 0)))
    return Match(max_iou, argmax, gt_best, is_gt_best, unmatched)


def grid_valid_mask(level_grids, image_hw=None):
    """bool ``[N]`` over the concatenated levels: anchors fully inside ``image_hw`` (all True if None)."""
    flat = np.concatenate([lvl.reshape(-1, 4) for lvl in level_grids], axis=0)
    if image_hw is None:
        return np.ones(len(flat), dtype=bool)
    return inside_mask(flat, image_hw[0], image_hw[1])


def labels_from_match(match, positive_thresh, negative_thresh, rule=REFERENCE_RULE):
    """RPN labels int32 ``[N]`` (1 fg, 0 bg, -1 ignore) of a :class:`Match`: the rules' one definition.

    ``rule`` ``"reference"`` (tensorpack, the default): fg when the anchor is a
    gt's best or has max IoU >= ``positive_thresh``, and max IoU >=
    ``negative_thresh`` (applied last, the bg rule wins); when a gt overlaps no
    valid anchor, every anchor ties as its best. ``"always_positive"``: fg
    when max IoU >= ``positive_thresh``; bg when < ``negative_thresh``; then
    every anchor attaining a gt's best IoU is fg. Excluded anchors (max IoU -1)
    and all others are ignored.
    """
    if rule not in BEST_ANCHOR_RULES:
        raise ValueError(f"unknown best-anchor rule {rule!r}")
    labels = np.full(len(match.max_iou), -1, dtype=np.int32)
    valid = match.max_iou >= 0
    if rule == REFERENCE_RULE:
        best = match.is_gt_best | (valid if match.unmatched_gt else False)
        labels[valid & (best | (match.max_iou >= positive_thresh))] = 1
        labels[valid & (match.max_iou < negative_thresh)] = 0
        return labels
    labels[valid & (match.max_iou >= positive_thresh)] = 1
    labels[valid & (match.max_iou < negative_thresh)] = 0
    labels[match.is_gt_best] = 1
    return labels


class _Axes:
    """The level grids as K = levels x ratios regular 1-D axes, concatenated for vectorised lookups.

    Grid k has columns j with x1 = ``X1[ox[k] + j]`` (x2 likewise) and rows i
    with y1 = ``Y1[oy[k] + i]``; its anchor (i, j) has the flat index
    ``base[k] + (i * fw[k] + j) * na[k]``. Coordinates come from the anchor
    arrays, so IoUs computed from them equal those of the flat anchors bit for
    bit. ``x0/y0/aw/ah/stride`` (first position, nominal size) only bound
    search windows, with margins.
    """

    def __init__(self, level_grids, strides, image_hw):
        x1, x2, y1, y2, rows = [], [], [], [], []
        offset = 0
        for lvl, stride in zip(level_grids, strides):
            fh, fw, na = lvl.shape[:3]
            # [A, fw] / [A, fh] transposed and flattened: grid (level, ratio a) is row a.
            x1.append(lvl[0, :, :, 0].T.ravel())
            x2.append(lvl[0, :, :, 2].T.ravel())
            y1.append(lvl[:, 0, :, 1].T.ravel())
            y2.append(lvl[:, 0, :, 3].T.ravel())
            rows += [(fh, fw, na, a, offset, stride) for a in range(na)]
            offset += fh * fw * na
        self.n = offset
        self.X1, self.X2 = np.concatenate(x1), np.concatenate(x2)
        self.Y1, self.Y2 = np.concatenate(y1), np.concatenate(y2)
        # the same positions as pycocotools sees them (coco_form): float64 start, start + float32 size, size
        self.CX0, _, self.CX1, _, self.CW, _ = coco_form(np.stack([self.X1, self.X1, self.X2, self.X1], axis=1))
        self.CY0, _, self.CY1, _, self.CH, _ = coco_form(np.stack([self.Y1, self.Y1, self.Y2, self.Y1], axis=1))
        info = np.asarray(rows, dtype=np.int64).reshape(-1, 6)
        self.fh, self.fw, self.na, self.ratio, self.level_offset = (info[:, c] for c in range(5))
        self.base = self.level_offset + self.ratio
        self.stride = info[:, 5].astype(np.float64)
        self.ox = np.cumsum(self.fw) - self.fw
        self.oy = np.cumsum(self.fh) - self.fh
        self.x0, self.y0 = self.X1[self.ox].astype(np.float64), self.Y1[self.oy].astype(np.float64)
        for first, count, coords in ((self.ox, self.fw, self.X1), (self.oy, self.fh, self.Y1)):
            step = coords[np.where(count > 1, first + 1, first)] - coords[first]
            if np.any((count > 1) & (np.abs(step - self.stride) > 1e-3 * self.stride)):
                raise ValueError(f"anchor grids are not spaced by their strides {list(strides)}")
        self.aw = self.X2[self.ox].astype(np.float64) - self.x0
        self.ah = self.Y2[self.oy].astype(np.float64) - self.y0
        # Fully inside columns / rows form one range per grid (x1 >= 0 is a suffix, x2 <= W a prefix).
        self.vx0, self.vx1 = self._inside_range(self.X1, self.X2, self.ox, self.fw, None if image_hw is None else image_hw[1])
        self.vy0, self.vy1 = self._inside_range(self.Y1, self.Y2, self.oy, self.fh, None if image_hw is None else image_hw[0])
        self.has_valid = (self.vx1 > self.vx0) & (self.vy1 > self.vy0)

    @staticmethod
    def _inside_range(lo, hi, starts, counts, limit):
        """Per grid [first, stop) of positions with ``lo >= 0`` and ``hi <= limit`` (all when limit is None)."""
        if limit is None:
            return np.zeros(len(starts), np.int64), counts.copy()
        pos = np.arange(len(lo)) - np.repeat(starts, counts)
        inside = (lo >= 0) & (hi <= limit)
        first = np.minimum.reduceat(np.where(inside, pos, np.iinfo(np.int64).max), starts)
        stop = np.maximum.reduceat(np.where(inside, pos + 1, 0), starts)
        first = np.minimum(first, counts)
        return first, np.maximum(stop, first)

    def valid_at(self, ranks):
        """Flat indices of the valid anchors with these ranks (grid by grid, each rectangle row-major)."""
        cols = self.vx1 - self.vx0
        sizes = (self.vy1 - self.vy0) * cols
        ends = np.cumsum(sizes)
        k = np.searchsorted(ends, ranks, side="right")
        di, dj = np.divmod(ranks - (ends - sizes)[k], cols[k])
        return self.base[k] + ((self.vy0[k] + di) * self.fw[k] + self.vx0[k] + dj) * self.na[k]

    def iou(self, k, i, j, gc, g_area):
        """Exact IoUs of the anchors (grid ``k``, row ``i``, column ``j``) with gt boxes whose :func:`coco_form`
        corners are ``gc`` (x0, y0, x1, y1; broadcasting)."""
        cx, cy = self.ox[k] + j, self.oy[k] + i
        iw = _overlap(self.CX0[cx], self.CX1[cx], gc[0], gc[2])
        ih = _overlap(self.CY0[cy], self.CY1[cy], gc[1], gc[3])
        return _iou(iw, ih, self.CW[cx] * self.CH[cy], g_area)

    def window(self, lo_edge, hi_edge, need, axis):
        """[start, stop) ``[K, M]`` of positions whose 1-D overlap with [lo_edge, hi_edge] (``[M]``) may reach ``need``.

        Overlap >= need requires x2 >= lo_edge + need and x1 <= hi_edge - need,
        with x1 = first + position * stride. One extra position on each side
        absorbs float rounding: a superset is harmless, IoUs are computed exactly.
        """
        first, size, v0, v1 = (self.x0, self.aw, self.vx0, self.vx1) if axis == 1 else (self.y0, self.ah, self.vy0, self.vy1)
        first, size, stride = first[:, None], size[:, None], self.stride[:, None]
        start = np.floor((lo_edge[None, :] + need - size - first) / stride) - 1
        stop = np.floor((hi_edge[None, :] - need - first) / stride) + 2
        start = np.clip(start, v0[:, None], v1[:, None]).astype(np.int64)
        stop = np.clip(stop, v0[:, None], v1[:, None]).astype(np.int64)
        return start, np.maximum(stop, start)


def _ragged(starts, lengths):
    """The ranges [starts[t], starts[t] + lengths[t]) concatenated: (owner t of each element, element values)."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return owner, starts[owner] + np.arange(len(owner)) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def label_grid(level_grids, strides, gt_boxes, image_hw, positive_thresh, negative_thresh, rule=REFERENCE_RULE):
    """RPN labels of grid-structured anchors as :class:`GridLabels`, whose ``dense()`` is identical to
    ``labels_from_match(match_naive(flat, gt_boxes, inside), positive_thresh, negative_thresh, rule)``.

    Args:
        level_grids: float32 ``[fh, fw, A, 4]`` per level (``trainer.anchors.level_anchors``:
            anchors of column j / row i at ``first + j * stride`` / ``first + i * stride``).
        strides: pixel stride per level.
        gt_boxes: float32 ``[M, 4]`` xyxy.
        image_hw: (height, width); only anchors fully inside take part (None: all).
        positive_thresh, negative_thresh: IoU thresholds, ``negative_thresh <= positive_thresh``.
        rule: ``RPN.BEST_ANCHOR_RULE`` (:func:`labels_from_match`).

    Why it is fast and still exact: labels only ask whether an anchor's max
    IoU reaches ``negative_thresh`` / ``positive_thresh`` and which anchors
    attain a gt's best IoU. A cheap lower bound ``b`` of each gt's best IoU
    (the anchor nearest its centre, per grid) gives a per-gt threshold
    ``t = min(negative_thresh, b)``; only pairs with IoU >= t can matter, and
    IoU >= t needs an intersection of at least ``t / (1 + t) * (anchor area +
    gt area)``, hence a minimum overlap along each axis and a small window of
    columns x rows per (grid, gt) -- usually a few anchors instead of every
    overlapping one. IoUs inside the windows use the same float32 expression
    as :func:`iou_matrix`, so thresholds and ties decide exactly as there.
    """
    g = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    axes = _Axes(level_grids, strides, image_hw)
    live = (g[:, 2] > g[:, 0]) & (g[:, 3] > g[:, 1])  # degenerate gts have IoU 0 with everything
    g = g[live]
    m, k = len(g), len(axes.fh)
    not_bg = np.zeros(axes.n, dtype=bool)
    if m == 0 or not axes.has_valid.any():
        return GridLabels(axes, np.zeros(0, np.int64), not_bg, negative_thresh > 0)
    g_area = box_area(g)
    gx1, gy1, gx2, gy2, gw, gh = coco_form(g)

    # 1. A lower bound of each gt's best IoU: the valid anchor nearest its centre, in every grid.
    def nearest(centre, first, size, v0, v1, count):
        pos = np.rint((centre[None, :] - first[:, None] - size[:, None] / 2) / axes.stride[:, None])
        pos = np.clip(pos, v0[:, None], np.maximum(v1 - 1, v0)[:, None])
        return np.minimum(pos, (count - 1)[:, None]).astype(np.int64)  # in range even for grids with no valid anchor

    jnear = nearest((gx1 + gx2) / 2, axes.x0, axes.aw, axes.vx0, axes.vx1, axes.fw)
    inear = nearest((gy1 + gy2) / 2, axes.y0, axes.ah, axes.vy0, axes.vy1, axes.fh)
    near = axes.iou(np.arange(k)[:, None], inear, jnear, (gx1[None], gy1[None], gx2[None], gy2[None]), g_area[None])
    lower = np.where(axes.has_valid[:, None], near, 0).max(axis=0).astype(np.float64)
    t = np.minimum(float(negative_thresh), lower)[None, :]

    # 2. Per (grid, gt): the window of anchors that may reach IoU t (a superset, see window()).
    # IoU >= t needs intersection >= t / (1 + t) * (anchor area + gt area); the intersection's
    # height is at most min(anchor, gt) height, so its width must be at least need / that (and vice versa).
    need = t / (1 + t) * ((axes.aw * axes.ah)[:, None] + (gw * gh)[None, :]) * (1 - 1e-3)
    min_w, min_h = np.minimum(axes.aw[:, None], gw[None, :]), np.minimum(axes.ah[:, None], gh[None, :])
    need_w, need_h = need / min_h, need / min_w
    possible = (need_w <= min_w * (1 + 1e-3) + 1e-3) & (need_h <= min_h * (1 + 1e-3) + 1e-3)
    c0, c1 = axes.window(gx1, gx2, need_w, axis=1)
    r0, r1 = axes.window(gy1, gy2, need_h, axis=0)
    counts = np.where(possible, (c1 - c0) * (r1 - r0), 0).ravel()
    total = int(counts.sum())
    if total == 0:  # no pair overlaps: every gt is unmatched
        fg = _reference_unmatched_fg(axes, not_bg, negative_thresh) if rule == REFERENCE_RULE else np.zeros(0, np.int64)
        return GridLabels(axes, fg, not_bg, negative_thresh > 0)

    # 3. The windows' pairs. A pair's overlap width depends only on its column and its height only
    #    on its row, so both are computed once per window column / row (the operations of
    #    iou_matrix, hence the same values), columns and rows without overlap dropped, then combined per pair.
    win = np.flatnonzero(counts)
    k_win, g_win = np.divmod(win, m)
    owner_c, col = _ragged(c0.ravel()[win], (c1 - c0).ravel()[win])
    cx = axes.ox[k_win[owner_c]] + col
    iw = _overlap(axes.CX0[cx], axes.CX1[cx], gx1[g_win[owner_c]], gx2[g_win[owner_c]])
    owner_r, row = _ragged(r0.ravel()[win], (r1 - r0).ravel()[win])
    cy = axes.oy[k_win[owner_r]] + row
    ih = _overlap(axes.CY0[cy], axes.CY1[cy], gy1[g_win[owner_r]], gy2[g_win[owner_r]])
    keep_c, keep_r = iw > 0, ih > 0
    owner_c, col, iw, a_w = owner_c[keep_c], col[keep_c], iw[keep_c], axes.CW[cx][keep_c]
    owner_r, row, ih, a_h = owner_r[keep_r], row[keep_r], ih[keep_r], axes.CH[cy][keep_r]
    ncol = np.bincount(owner_c, minlength=len(win))
    nrow = np.bincount(owner_r, minlength=len(win))
    pw, q = _ragged(np.zeros(len(win), np.int64), ncol * nrow)
    di, dj = np.divmod(q, ncol[pw])
    ci, ri = (np.cumsum(ncol) - ncol)[pw] + dj, (np.cumsum(nrow) - nrow)[pw] + di
    gi = g_win[pw]
    ious = _iou(iw[ci], ih[ri], a_w[ci] * a_h[ri], g_area[gi])  # = iou_matrix's values, bit for bit

    # 4. The rules (labels_from_match): any pair >= negative makes the anchor not-bg; an anchor at a
    #    gt's best IoU or with a pair >= positive is a fg candidate.
    best = np.zeros(m, dtype=np.float32)
    np.maximum.at(best, gi, ious)
    at_best = (ious == best[gi]) & (ious > 0)
    used = at_best | (ious >= min(positive_thresh, negative_thresh))  # the pairs that set a label
    ious, at_best, pw, ci, ri = ious[used], at_best[used], pw[used], ci[used], ri[used]
    k_p = k_win[pw]
    anchor = axes.base[k_p] + (row[ri] * axes.fw[k_p] + col[ci]) * axes.na[k_p]
    candidates = anchor[at_best | (ious >= positive_thresh)]
    not_bg[anchor[ious >= negative_thresh]] = True
    if rule == ALWAYS_POSITIVE_RULE:
        fg = np.unique(candidates)
        not_bg[fg] = True
    elif np.any(best == 0):  # a gt overlapping no anchor: in the reference every anchor is one of its best
        fg = _reference_unmatched_fg(axes, not_bg, negative_thresh)
    else:
        fg = np.unique(candidates[not_bg[candidates]])  # the bg rule is applied last
    return GridLabels(axes, fg, not_bg, negative_thresh > 0)


def _reference_unmatched_fg(axes, not_bg, negative_thresh):
    """fg under the reference rule when some gt overlaps no valid anchor: every valid anchor not made bg."""
    if negative_thresh <= 0:
        return np.sort(axes.valid_at(np.arange(int(((axes.vx1 - axes.vx0) * (axes.vy1 - axes.vy0)).sum()))))
    return np.flatnonzero(not_bg)


class GridLabels:
    """RPN labels of grid anchors in sparse form (what :func:`label_grid` returns).

    ``fg``: sorted flat indices of the fg anchors; ``not_bg``: bool ``[N]``,
    the valid anchors that are not bg (fg or ignored). Every other valid
    anchor is bg, every invalid one ignored. No label array is built until
    :meth:`dense`: sampling draws bg anchors by rank (:meth:`valid_at`).
    """

    def __init__(self, axes, fg, not_bg, bg_possible):
        self._axes = axes
        self.fg = fg
        self.not_bg = not_bg
        self.n = axes.n
        self.num_valid = int(((axes.vx1 - axes.vx0) * (axes.vy1 - axes.vy0)).sum())
        # negative_thresh <= 0: no IoU is below it, so nothing is bg.
        self.num_bg = self.num_valid - int(np.count_nonzero(not_bg)) if bg_possible else 0

    def valid_at(self, ranks):
        """Flat indices of the valid anchors of ranks ``ranks`` in [0, num_valid)."""
        return self._axes.valid_at(np.asarray(ranks, dtype=np.int64))

    def is_bg(self, flat_index):
        """bool per flat index of a *valid* anchor: it is bg."""
        if self.num_bg == 0:
            return np.zeros(len(flat_index), dtype=bool)
        return ~self.not_bg[flat_index]

    def bg(self):
        """Sorted flat indices of all bg anchors (enumerates every valid anchor: for small images and tests)."""
        if self.num_bg == 0:
            return np.zeros(0, np.int64)
        valid = np.sort(self.valid_at(np.arange(self.num_valid)))
        return valid[~self.not_bg[valid]]

    def dense(self):
        """int32 ``[N]``: 1 fg, 0 bg, -1 ignore (equals :func:`labels_from_match` of the naive match)."""
        labels = np.full(self.n, -1, dtype=np.int32)
        labels[self.bg()] = 0
        labels[self.fg] = 1
        return labels


def anchors_at(level_grids, flat_index):
    """float32 ``[F, 4]``: the anchors at these indices of the concatenated flat levels."""
    flat_index = np.asarray(flat_index, dtype=np.int64).reshape(-1)
    out = np.zeros((len(flat_index), 4), dtype=np.float32)
    offset = 0
    for lvl in level_grids:
        fh, fw, na = lvl.shape[:3]
        size = fh * fw * na
        sel = np.flatnonzero((flat_index >= offset) & (flat_index < offset + size))
        cell, a = np.divmod(flat_index[sel] - offset, na)
        out[sel] = lvl[cell // fw, cell % fw, a]
        offset += size
    return out


def best_gt(anchors, gt_boxes):
    """int64 ``[F]``: per anchor the gt of highest IoU, the lowest index among ties (as :func:`match_naive`)."""
    return iou_matrix(anchors, gt_boxes).argmax(axis=1).astype(np.int64)
