"""Box geometry between the coordinate systems of a table's life.

Three frames appear in ddcache:

* **source**: what the dataset stores. FinTabNet: PDF points, origin at the
  bottom-left of the page, y up, in the page's user space (the mediabox may
  not start at 0,0). PubTabNet: image pixels, origin top-left, y down.
* **page pixels**: the page rendered at ``scale`` pixels per point, origin
  top-left, y down.
* **crop pixels**: page pixels shifted by the crop's top-left corner.

All boxes are xyxy float arrays ``[..., 4]``. Functions are pure.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PageFrame:
    """How a PDF page maps to pixels.

    ``mediabox`` is (x0, y0, x1, y1) in points; ``scale`` = pixels per point
    (dpi / 72).
    """

    mediabox: tuple
    scale: float

    @property
    def height_pt(self):
        return float(self.mediabox[3] - self.mediabox[1])

    @property
    def width_pt(self):
        return float(self.mediabox[2] - self.mediabox[0])


def pdf_to_pixels(boxes, frame):
    """PDF boxes (points, bottom-left origin) -> page pixels (top-left origin).

    left = s*(x0 - mx0), top = s*(H - (y1 - my0)), right = s*(x1 - mx0),
    bottom = s*(H - (y0 - my0)).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    mx0, my0 = frame.mediabox[0], frame.mediabox[1]
    h, s = frame.height_pt, frame.scale
    out = np.stack(
        [s * (b[:, 0] - mx0), s * (h - (b[:, 3] - my0)), s * (b[:, 2] - mx0), s * (h - (b[:, 1] - my0))],
        axis=1,
    )
    return out


def pixels_to_pdf(boxes, frame):
    """Inverse of :func:`pdf_to_pixels`: page pixels -> PDF points (bottom-left origin)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    mx0, my0 = frame.mediabox[0], frame.mediabox[1]
    h, s = frame.height_pt, frame.scale
    return np.stack(
        [b[:, 0] / s + mx0, h - b[:, 3] / s + my0, b[:, 2] / s + mx0, h - b[:, 1] / s + my0], axis=1
    )


def shift(boxes, dx, dy):
    """Translate boxes by (dx, dy) (same units as the boxes)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return b + np.array([dx, dy, dx, dy], dtype=np.float64)


def clip(boxes, width, height):
    """Clip boxes to [0, width] x [0, height]."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b


def valid(boxes, min_size=1.0):
    """Boolean mask of boxes at least ``min_size`` wide and high."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)


def union(boxes):
    """The smallest box containing all ``boxes`` (at least one), as a length-4 array."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        raise ValueError("union of no boxes")
    return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])


def area(boxes):
    """Areas of xyxy boxes (0 for degenerate ones)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def pad_box(box, pad):
    """Grow one box by ``pad`` on every side."""
    x0, y0, x1, y1 = box
    return np.array([x0 - pad, y0 - pad, x1 + pad, y1 + pad], dtype=np.float64)


def intersect(a, b):
    """Intersection of two single boxes, or None when they do not overlap."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    if x1 <= x0 or y1 <= y0:
        return None
    return np.array([x0, y0, x1, y1], dtype=np.float64)
