"""RPN training targets per FPN level (tensorpack's FPN-mode semantics, computed in the data pipeline).

For one resized, unpadded training image of ``H x W`` pixels and its gt boxes
(float32 ``[M, 4]`` xyxy pixels), anchors of all levels (``trainer.anchors``)
are matched at once, labelled, subsampled and split back per level:

1. anchors not fully inside ``[0, W] x [0, H]`` are ignored (-1) and take no
   part in matching (so "a gt's best anchor" is its best *inside* anchor);
2. labels by ``RPN.BEST_ANCHOR_RULE`` (``trainer.matcher.labels_from_match``):
   ``reference`` (default, tensorpack's order): every anchor attaining a gt's
   best IoU (ties included) -> fg, max IoU >= ``RPN.POSITIVE_ANCHOR_THRESH``
   -> fg, then max IoU < ``RPN.NEGATIVE_ANCHOR_THRESH`` -> bg, so a small
   cell whose best anchor has IoU < 0.3 gets no fg anchor;
   ``always_positive``: the best anchors are made fg after the bg rule
   (detectron2's low-quality matches);
3. fg above ``BATCH_PER_IM * FG_RATIO`` and bg above ``BATCH_PER_IM - #fg`` are
   set to -1 at random (the given RandomState), as tensorpack does;
4. fg anchors get their argmax gt box (lowest gt index among ties), all other
   anchors zeros.

IoUs are computed as the reference computes them (pycocotools' float64
arithmetic on float32 ``xywh`` boxes), so the labels before subsampling are
the reference's, bit for bit (tests/test_golden_model.py).
With no gt box, every inside anchor is bg before subsampling.
``RPN.CROWD_OVERLAP_THRESH`` is not used: caches carry no crowd boxes.
"""
import time
from dataclasses import dataclass

import numpy as np

from trainer.anchors import feature_shape, level_anchors
from trainer.matcher import anchors_at, best_gt, label_grid


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
    rule: str = "reference"

    @classmethod
    def from_cfg(cls, cfg):
        """Read FPN.ANCHOR_STRIDES, FPN.RESOLUTION_REQUIREMENT, RPN.{ANCHOR_SIZES, ANCHOR_RATIOS,
        POSITIVE_ANCHOR_THRESH, NEGATIVE_ANCHOR_THRESH, BATCH_PER_IM, FG_RATIO, BEST_ANCHOR_RULE}."""
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
            rule=str(cfg.RPN.BEST_ANCHOR_RULE),
        )


class AnchorGrids:
    """Level anchor grids for any image size, sliced from one grid per level computed for the largest size seen.

    A cell's anchors do not depend on the grid size (``trainer.anchors``), so
    slicing gives exactly ``level_anchors(stride, size, ratios, fh, fw)``
    without recomputing ~300K anchors for every randomly resized image.
    With ``max_side`` (the training ``PREPROC.MAX_SIZE``), the first call
    computes grids for a ``max_side`` square, so no later image regrows them.
    """

    def __init__(self, params, max_side=None):
        self.params = params
        self.max_side = max_side
        self._grids = [None] * len(params.strides)

    def shapes(self, image_h, image_w):
        """[(fh, fw)] per level for an unpadded image of ``image_h x image_w`` pixels."""
        return [feature_shape(image_h, image_w, s, self.params.resolution_requirement) for s in self.params.strides]

    def levels(self, image_h, image_w):
        """List of float32 ``[fh, fw, A, 4]`` anchor grids (views; do not modify)."""
        out = []
        shapes = self.shapes(image_h, image_w)
        largest = self.shapes(self.max_side, self.max_side) if self.max_side else shapes
        for k, ((fh, fw), (lh, lw), stride, size) in enumerate(zip(shapes, largest, self.params.strides, self.params.sizes)):
            grid = self._grids[k]
            if grid is None or grid.shape[0] < fh or grid.shape[1] < fw:
                gh = max(fh, lh, 0 if grid is None else grid.shape[0])
                gw = max(fw, lw, 0 if grid is None else grid.shape[1])
                grid = self._grids[k] = level_anchors(stride, size, self.params.ratios, gh, gw)
            out.append(grid[:fh, :fw])
        return out


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


def _choose(inds, keep, rng):
    """At most ``keep`` of the sorted indices ``inds``, chosen at random; sorted."""
    if len(inds) <= keep:
        return inds
    return np.sort(inds[_random_subset(len(inds), keep, rng)])


def _sample_bg(grid_labels, keep, rng):
    """At most ``keep`` bg anchors of :class:`trainer.matcher.GridLabels`, uniformly at random; sorted flat indices.

    With bg plentiful (the usual ~100K of them for 256 slots) valid anchors
    are drawn by rank with replacement, non-bg and repeated ones dropped,
    until ``keep`` remain: sequential sampling without replacement from the bg
    set, in O(keep) and without an array over all anchors.
    """
    gl = grid_labels
    if keep <= 0 or gl.num_bg == 0:
        return np.zeros(0, np.int64)
    if gl.num_bg < 4 * keep or 2 * gl.num_bg < gl.num_valid:
        return _choose(gl.bg(), keep, rng)
    out = np.zeros(0, np.int64)
    while len(out) < keep:
        drawn = gl.valid_at(rng.randint(0, gl.num_valid, size=2 * keep))
        out = np.concatenate([out, drawn[gl.is_bg(drawn)]])
        _, first = np.unique(out, return_index=True)
        out = out[np.sort(first)]
    return np.sort(out[:keep])


def subsample(grid_labels, batch_per_im, fg_ratio, rng):
    """(fg, bg) sorted flat indices kept: at most ``int(batch_per_im * fg_ratio)`` fg, then at most
    ``batch_per_im - #fg`` bg, each a uniformly random subset (tensorpack's rule); all others are ignored."""
    fg = _choose(grid_labels.fg, int(batch_per_im * fg_ratio), rng)
    return fg, _sample_bg(grid_labels, batch_per_im - len(fg), rng)


def sparse_rpn_targets(image_hw, gt_boxes, grids, rng, timings=None):
    """RPN targets of one image over all levels' anchors, flat and sparse.

    Args:
        image_hw: (H, W) of the resized, unpadded image in pixels.
        gt_boxes: float32 ``[M, 4]`` xyxy pixels of that image (M may be 0).
        grids: :class:`AnchorGrids` (carries the config values).
        rng: ``np.random.RandomState`` for subsampling.
        timings: optional dict; seconds are added under ``"matching"`` and ``"sampling"``.
    Returns:
        (fg indices int64 ``[F]`` over the concatenated levels, their gt boxes
        float32 ``[F, 4]``, bg indices int64 ``[B]``, level shapes [(fh, fw, A)]);
        every other anchor is ignored.
    """
    p = grids.params
    h, w = int(image_hw[0]), int(image_hw[1])
    t0 = time.perf_counter()
    gt_boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    levels = grids.levels(h, w)
    grid_labels = label_grid(levels, p.strides, gt_boxes, (h, w), p.positive_thresh, p.negative_thresh, p.rule)
    t1 = time.perf_counter()
    fg, bg = subsample(grid_labels, p.batch_per_im, p.fg_ratio, rng)
    # Only the kept fg anchors need their gt: an exact argmax over all gts for a few hundred anchors.
    fg_boxes = gt_boxes[best_gt(anchors_at(levels, fg), gt_boxes)] if len(fg) else np.zeros((0, 4), np.float32)
    if timings is not None:
        timings["matching"] = timings.get("matching", 0.0) + (t1 - t0)
        timings["sampling"] = timings.get("sampling", 0.0) + (time.perf_counter() - t1)
    return fg, fg_boxes, bg, [lvl.shape[:3] for lvl in levels]


def dense_level_targets(fg, fg_boxes, bg, shapes):
    """Per level (labels int32 ``[fh, fw, A]``: 1 at ``fg``, 0 at ``bg``, -1 elsewhere;
    boxes float32 ``[fh, fw, A, 4]``: ``fg_boxes`` at ``fg``, zeros elsewhere)."""
    n = int(sum(fh * fw * na for fh, fw, na in shapes))
    labels = np.full(n, -1, dtype=np.int32)
    labels[bg] = 0
    labels[fg] = 1
    boxes = np.zeros((n, 4), dtype=np.float32)
    if len(fg):
        boxes[fg] = fg_boxes
    out, offset = [], 0
    for fh, fw, na in shapes:
        size = fh * fw * na
        out.append((labels[offset:offset + size].reshape(fh, fw, na), boxes[offset:offset + size].reshape(fh, fw, na, 4)))
        offset += size
    return out


def rpn_targets(image_hw, gt_boxes, grids, rng, timings=None):
    """RPN targets of one image per level (arguments as :func:`sparse_rpn_targets`).

    Returns:
        list over levels 2..6 of (labels int32 ``[fh, fw, A]``, boxes float32 ``[fh, fw, A, 4]``).
    """
    fg, fg_boxes, bg, shapes = sparse_rpn_targets(image_hw, gt_boxes, grids, rng, timings)
    t1 = time.perf_counter()
    out = dense_level_targets(fg, fg_boxes, bg, shapes)
    if timings is not None:
        timings["sampling"] = timings.get("sampling", 0.0) + (time.perf_counter() - t1)
    return out
