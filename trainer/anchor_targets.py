"""RPN training targets per FPN level (tensorpack's FPN-mode semantics, computed in the data pipeline).

For one resized, unpadded training image of ``H x W`` pixels and its gt boxes
(float32 ``[M, 4]`` xyxy pixels), anchors of all levels (``trainer.anchors``)
are matched at once, labelled, subsampled and split back per level:

1. anchors not fully inside ``[0, W] x [0, H]`` are ignored (-1) and take no
   part in matching (so "a gt's best anchor" is its best *inside* anchor);
2. max IoU >= ``RPN.POSITIVE_ANCHOR_THRESH`` -> fg (1);
3. max IoU <  ``RPN.NEGATIVE_ANCHOR_THRESH`` -> bg (0);
4. every anchor attaining a gt's best IoU (ties included, best IoU > 0) -> fg.
   Applied after 3 (as detectron2's low-quality matches): tensorpack applies
   it before 3, which leaves small cells whose best anchor has IoU < 0.3
   without any fg anchor -- common for thin table cells -- and would mark
   every anchor as "best" for a gt that overlaps none;
5. fg above ``BATCH_PER_IM * FG_RATIO`` and bg above ``BATCH_PER_IM - #fg`` are
   set to -1 at random (the given RandomState), as tensorpack does;
6. fg anchors get their argmax gt box (lowest gt index among ties), all other
   anchors zeros.

With no gt box, every inside anchor is bg before subsampling.
``RPN.CROWD_OVERLAP_THRESH`` is not used: caches carry no crowd boxes.
"""
import time
from dataclasses import dataclass

import numpy as np

from trainer.anchors import feature_shape, level_anchors
from trainer.matcher import match_grid


@dataclass(frozen=True)
class RPNTargetParams:
    """Plain, picklable copy of the config values the targets need (pixels; thresholds are IoUs)."""

    strides: tuple
    sizes: tuple
    ratios: tuple
    resolution_requirement: int
    positive_thresh: float
    negative_thresh: float
    batch_per_im: int
    fg_ratio: float

    @classmethod
    def from_cfg(cls, cfg):
        """Read FPN.ANCHOR_STRIDES, FPN.RESOLUTION_REQUIREMENT, RPN.{ANCHOR_SIZES, ANCHOR_RATIOS,
        POSITIVE_ANCHOR_THRESH, NEGATIVE_ANCHOR_THRESH, BATCH_PER_IM, FG_RATIO}."""
        strides = tuple(int(s) for s in cfg.FPN.ANCHOR_STRIDES)
        sizes = tuple(float(s) for s in cfg.RPN.ANCHOR_SIZES)
        if len(strides) != len(sizes):
            raise ValueError(f"{len(strides)} FPN.ANCHOR_STRIDES but {len(sizes)} RPN.ANCHOR_SIZES (one size per level)")
        return cls(
            strides=strides,
            sizes=sizes,
            ratios=tuple(float(r) for r in cfg.RPN.ANCHOR_RATIOS),
            resolution_requirement=int(cfg.FPN.RESOLUTION_REQUIREMENT),
            positive_thresh=float(cfg.RPN.POSITIVE_ANCHOR_THRESH),
            negative_thresh=float(cfg.RPN.NEGATIVE_ANCHOR_THRESH),
            batch_per_im=int(cfg.RPN.BATCH_PER_IM),
            fg_ratio=float(cfg.RPN.FG_RATIO),
        )


class AnchorGrids:
    """Level anchor grids for any image size, sliced from one grid per level computed for the largest size seen.

    A cell's anchors do not depend on the grid size (``trainer.anchors``), so
    slicing gives exactly ``level_anchors(stride, size, ratios, fh, fw)``
    without recomputing ~300K anchors for every randomly resized image.
    """

    def __init__(self, params):
        self.params = params
        self._grids = [None] * len(params.strides)

    def shapes(self, image_h, image_w):
        """[(fh, fw)] per level for an unpadded image of ``image_h x image_w`` pixels."""
        return [feature_shape(image_h, image_w, s, self.params.resolution_requirement) for s in self.params.strides]

    def levels(self, image_h, image_w):
        """List of float32 ``[fh, fw, A, 4]`` anchor grids (views; do not modify)."""
        out = []
        for k, ((fh, fw), stride, size) in enumerate(zip(self.shapes(image_h, image_w), self.params.strides, self.params.sizes)):
            grid = self._grids[k]
            if grid is None or grid.shape[0] < fh or grid.shape[1] < fw:
                gh = max(fh, 0 if grid is None else grid.shape[0])
                gw = max(fw, 0 if grid is None else grid.shape[1])
                grid = self._grids[k] = level_anchors(stride, size, self.params.ratios, gh, gw)
            out.append(grid[:fh, :fw])
        return out


def label_anchors(match, positive_thresh, negative_thresh):
    """Labels before subsampling, int32 ``[N]`` (1 fg, 0 bg, -1 ignore) from a ``trainer.matcher.Match``."""
    labels = np.full(len(match.max_iou), -1, dtype=np.int32)
    valid = match.max_iou >= 0  # matchers mark excluded anchors with -1
    labels[valid & (match.max_iou >= positive_thresh)] = 1
    labels[valid & (match.max_iou < negative_thresh)] = 0
    labels[match.is_gt_best] = 1
    return labels


def _random_subset(n, k, rng):
    """``k`` distinct integers of [0, n), uniformly random (k <= n).

    For k << n (512 bg out of ~300K anchors) this draws with replacement and
    keeps the first k distinct values, which is exactly sequential sampling
    without replacement, in O(k) instead of permuting all n.
    """
    if 4 * k < n:
        draws = rng.randint(0, n, size=2 * k)
        uniq, first = np.unique(draws, return_index=True)
        if len(uniq) >= k:
            return draws[np.sort(first)[:k]]
    return rng.permutation(n)[:k]


def _disable_excess(labels, value, keep, rng):
    """Set all but ``keep`` randomly chosen entries equal to ``value`` to -1; return the kept indices (sorted)."""
    inds = np.flatnonzero(labels == value)
    if len(inds) <= keep:
        return inds
    kept = np.sort(inds[_random_subset(len(inds), keep, rng)])
    labels[inds] = -1
    labels[kept] = value
    return kept


def subsample_labels(labels, batch_per_im, fg_ratio, rng):
    """In place: at most ``int(batch_per_im * fg_ratio)`` fg, then at most ``batch_per_im - #fg`` bg.

    Returns the indices of the remaining fg anchors.
    """
    fg = _disable_excess(labels, 1, int(batch_per_im * fg_ratio), rng)
    _disable_excess(labels, 0, batch_per_im - len(fg), rng)
    return fg


def sparse_rpn_targets(image_hw, gt_boxes, grids, rng, timings=None):
    """RPN targets of one image over all levels' anchors, flat and sparse.

    Args:
        image_hw: (H, W) of the resized, unpadded image in pixels.
        gt_boxes: float32 ``[M, 4]`` xyxy pixels of that image (M may be 0).
        grids: :class:`AnchorGrids` (carries the config values).
        rng: ``np.random.RandomState`` for subsampling.
        timings: optional dict; seconds are added under ``"matching"`` and ``"sampling"``.
    Returns:
        (labels int32 ``[N]`` over the concatenated levels, fg indices int64
        ``[F]``, their gt boxes float32 ``[F, 4]``, level shapes [(fh, fw, A)]).
    """
    p = grids.params
    h, w = int(image_hw[0]), int(image_hw[1])
    t0 = time.perf_counter()
    levels = grids.levels(h, w)
    match = match_grid(levels, gt_boxes, (h, w))
    t1 = time.perf_counter()
    labels = label_anchors(match, p.positive_thresh, p.negative_thresh)
    fg = subsample_labels(labels, p.batch_per_im, p.fg_ratio, rng)
    fg_boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)[match.argmax[fg]]
    if timings is not None:
        timings["matching"] = timings.get("matching", 0.0) + (t1 - t0)
        timings["sampling"] = timings.get("sampling", 0.0) + (time.perf_counter() - t1)
    return labels, fg, fg_boxes, [lvl.shape[:3] for lvl in levels]


def dense_level_targets(labels, fg, fg_boxes, shapes):
    """Split flat targets back per level: list of (labels int32 ``[fh, fw, A]``, boxes float32 ``[fh, fw, A, 4]``).

    ``boxes`` holds ``fg_boxes`` at the ``fg`` anchors and zeros elsewhere.
    """
    labels = np.asarray(labels).astype(np.int32, copy=False)
    boxes = np.zeros((len(labels), 4), dtype=np.float32)
    if len(fg):
        boxes[fg] = fg_boxes
    out, offset = [], 0
    for fh, fw, na in shapes:
        n = fh * fw * na
        out.append((labels[offset:offset + n].reshape(fh, fw, na), boxes[offset:offset + n].reshape(fh, fw, na, 4)))
        offset += n
    return out


def rpn_targets(image_hw, gt_boxes, grids, rng, timings=None):
    """RPN targets of one image per level (arguments as :func:`sparse_rpn_targets`).

    Returns:
        list over levels 2..6 of (labels int32 ``[fh, fw, A]``, boxes float32 ``[fh, fw, A, 4]``).
    """
    labels, fg, fg_boxes, shapes = sparse_rpn_targets(image_hw, gt_boxes, grids, rng, timings)
    t1 = time.perf_counter()
    out = dense_level_targets(labels, fg, fg_boxes, shapes)
    if timings is not None:
        timings["sampling"] = timings.get("sampling", 0.0) + (time.perf_counter() - t1)
    return out
