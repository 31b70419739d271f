"""Anchor generation: the one definition shared by the data pipeline and the graph.

Convention (the reference's, tensorpack ``get_all_anchors``; pixels of the
resized, unpadded image, origin top-left): the anchors of feature cell
(i, j) at a level with stride ``s`` are centred at ``(j * s, i * s)`` -- the
cell's top-left corner, not its centre (checkpoints trained with this
placement predict boxes relative to it). For size ``z`` and ratio ``r``
(height / width) an anchor is ``w = sqrt(z**2 / r)``, ``h = r * w`` wide
and high (area ``z**2``), computed in float64 and rounded to float32 once,
after the shift, exactly as the reference does. Anchors of a cell do not
depend on the grid size, so a grid computed once for the largest image can
be sliced to any smaller feature map.
"""
import math

import numpy as np


def cell_anchors(size, ratios):
    """Anchors of one feature cell centred at (0, 0): float64 ``[A, 4]`` xyxy, A = len(ratios)."""
    out = []
    for r in ratios:
        w = np.sqrt(float(size) * float(size) / float(r))
        h = float(r) * w
        out.append([-w, -h, w, h])
    return np.asarray(out, dtype=np.float64) * 0.5


def level_anchors(stride, size, ratios, fh, fw):
    """All anchors of one FPN level: float32 ``[fh, fw, A, 4]`` xyxy in image pixels."""
    base = cell_anchors(size, ratios)
    sy = (np.arange(fh) * stride).astype(np.float32)
    sx = (np.arange(fw) * stride).astype(np.float32)
    shift_x, shift_y = np.meshgrid(sx, sy)  # [fh, fw]
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1)  # [fh, fw, 4] float32
    return (base[None, None, :, :] + shifts[:, :, None, :]).astype(np.float32)


def rounded_max_size(max_size, multiple):
    """``PREPROC.MAX_SIZE`` rounded up to a multiple of ``FPN.RESOLUTION_REQUIREMENT``.

    The reference replaces ``MAX_SIZE`` by this value when it finalizes its
    config, so its long-edge cap, anchor fields and box-decode clamp all use it
    (1333 -> 1344; 1408 stays 1408).
    """
    return int(math.ceil(float(max_size) / multiple) * multiple)


def field_size(max_size, stride):
    """Side of the square anchor field of a level for images up to ``max_size`` (already rounded)."""
    return int(math.ceil(float(max_size) / stride))


def feature_shape(image_h, image_w, stride, resolution_requirement=32):
    """Feature map size of a level for an image padded to ``resolution_requirement``.

    The graph pads the image to a multiple of ``resolution_requirement`` and P6
    is a stride-2 1x1 'VALID' pooling of P5, hence the ceil.
    """
    ph = int(math.ceil(image_h / resolution_requirement) * resolution_requirement)
    pw = int(math.ceil(image_w / resolution_requirement) * resolution_requirement)
    return int(math.ceil(ph / stride)), int(math.ceil(pw / stride))
