"""Anchor generation: the one definition shared by the data pipeline and the graph.

Convention (pixels of the resized, unpadded training image, origin top-left):
the anchor of feature cell (i, j) at a level with stride ``s`` is centred at
``((j + 0.5) * s, (i + 0.5) * s)``; for size ``z`` and ratio ``r`` (height /
width) it is ``w = z / sqrt(r)``, ``h = z * sqrt(r)`` (area ``z**2``). Anchors
of a cell do not depend on the grid size, so a grid computed once for the
largest image can be sliced to any smaller feature map.
"""
import math

import numpy as np


def cell_anchors(size, ratios):
    """Anchors of one feature cell centred at (0, 0): float32 [A, 4] xyxy, A = len(ratios)."""
    out = []
    for r in ratios:
        w = size / math.sqrt(r)
        h = size * math.sqrt(r)
        out.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return np.asarray(out, dtype=np.float32)


def level_anchors(stride, size, ratios, fh, fw):
    """All anchors of one FPN level: float32 [fh, fw, A, 4] xyxy in image pixels."""
    base = cell_anchors(size, ratios)
    cy = (np.arange(fh, dtype=np.float32) + 0.5) * stride
    cx = (np.arange(fw, dtype=np.float32) + 0.5) * stride
    shift_x, shift_y = np.meshgrid(cx, cy)  # [fh, fw]
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1)  # [fh, fw, 4]
    return (shifts[:, :, None, :] + base[None, None, :, :]).astype(np.float32)


def feature_shape(image_h, image_w, stride, resolution_requirement=32):
    """Feature map size of a level for an image padded to ``resolution_requirement``.

    The graph pads the image to a multiple of ``resolution_requirement`` and P6
    is a stride-2 'SAME' pooling of P5, hence the ceil.
    """
    ph = int(math.ceil(image_h / resolution_requirement) * resolution_requirement)
    pw = int(math.ceil(image_w / resolution_requirement) * resolution_requirement)
    return int(math.ceil(ph / stride)), int(math.ceil(pw / stride))
