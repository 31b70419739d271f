"""How many pixels a stored table (or page) gets: one object from ``ddcache build``'s options to the cropper.

The trainer resizes the short edge to a random size in
``PREPROC.TRAIN_SHORT_EDGE_SIZE`` (at most :data:`MAX_SHORT` in
``configs/cell.yaml``) with the long edge capped at ``PREPROC.MAX_SIZE``
(:data:`MAX_LONG`). With ``dpi="auto"`` each table is stored at exactly the
largest size training can ask for: ``scale = min(max_short / short_side,
max_long / long_side)`` pixels per source unit, and the integer pixel window
that covers the scaled box is trimmed by the sub-pixel overhang that would
make it one pixel larger (a box 1408.0 px wide starting at x = 12.3 covers
pixels 12..1420, 1409 of them). Training then only ever downsamples (no blur
from upsampling small tables) and no pixel is stored that training can
never use. Raster sources are never upsampled (it would add bytes, not
information). A fixed ``dpi`` renders at ``dpi / 72`` pixels per point
whatever the size (for a raster source: ``dpi / 72`` times its native size).

The options are stored in the manifest's ``build_options`` (``dpi``,
``max_short``, ``max_long``); :meth:`Resolution.from_manifest` reads them
back, e.g. to compare a cache with a training config (:meth:`Resolution.below`).
"""
from dataclasses import dataclass

from .errors import SkipSample

MAX_SHORT = 1200  # largest PREPROC.TRAIN_SHORT_EDGE_SIZE of configs/cell.yaml, px
MAX_LONG = 1408  # PREPROC.MAX_SIZE of configs/cell.yaml, px


@dataclass(frozen=True)
class Resolution:
    """``dpi``: ``"auto"`` or a number > 0; ``max_short`` / ``max_long``: the largest stored edges (px, auto only)."""

    dpi: object = "auto"
    max_short: int = MAX_SHORT
    max_long: int = MAX_LONG

    def __post_init__(self):
        if self.dpi != "auto":
            if isinstance(self.dpi, bool) or not isinstance(self.dpi, (int, float)) or not self.dpi > 0:
                raise ValueError(f"dpi must be 'auto' or a number > 0, not {self.dpi!r}")
        if not (int(self.max_short) >= 1 and int(self.max_long) >= 1):
            raise ValueError(f"max_short and max_long must be >= 1 (got {self.max_short}, {self.max_long})")

    @property
    def auto(self):
        return self.dpi == "auto"

    def scale(self, width, height, raster=False):
        """Pixels per source unit for a region of ``width`` x ``height`` source units (points or pixels).

        Raises SkipSample("degenerate_table") for a region without area in auto mode.
        """
        if not self.auto:
            return float(self.dpi) / 72.0
        short, long_ = min(width, height), max(width, height)
        if short <= 0:
            raise SkipSample("degenerate_table", f"{width:.1f} x {height:.1f}")
        scale = min(self.max_short / short, self.max_long / long_)
        return min(scale, 1.0) if raster else scale

    def fit(self, region, box_px):
        """The integer pixel window ``region`` (x0, y0, x1, y1) covering ``box_px``, trimmed to the size limits.

        Auto mode only (a fixed dpi has no limit): the box's longer side may
        span ``max_long`` pixels, the other ``max_short``. A window one pixel
        over its limit loses that pixel on the side where the box covers less
        of it, i.e. less than one pixel of the box.
        """
        if not self.auto:
            return tuple(region)
        x0, y0, x1, y1 = region
        bx0, by0, bx1, by1 = (float(v) for v in box_px)
        wide = bx1 - bx0 >= by1 - by0
        limit_w, limit_h = (self.max_long, self.max_short) if wide else (self.max_short, self.max_long)
        x0, x1 = _trim(x0, x1, bx0, bx1, int(limit_w))
        y0, y1 = _trim(y0, y1, by0, by1, int(limit_h))
        return x0, y0, x1, y1

    def as_options(self):
        """The manifest's ``build_options`` entries for this resolution."""
        return {"dpi": self.dpi, "max_short": int(self.max_short), "max_long": int(self.max_long)}

    @classmethod
    def from_options(cls, options):
        """The resolution stored in a manifest's ``build_options`` mapping (defaults for missing entries).

        Raises ValueError (or TypeError) for values that are not a resolution.
        """
        default = cls()
        return cls(options.get("dpi", default.dpi), options.get("max_short", default.max_short),
                   options.get("max_long", default.max_long))

    @classmethod
    def from_manifest(cls, manifest):
        """The resolution a cache was built with (its manifest's ``build_options``)."""
        return cls.from_options(manifest.get("build_options") or {})

    def below(self, short_edge, max_size):
        """Why images at this resolution are smaller than a training size asks for (one line), or None.

        ``short_edge``: the largest short edge training resizes to (px),
        ``max_size`` its long-edge cap. Known only in auto mode: a fixed dpi
        gives per-table sizes that the manifest does not record (None).
        """
        if not self.auto or (self.max_short >= short_edge and self.max_long >= max_size):
            return None
        return (f"stored at most {int(self.max_short)} px short edge / {int(self.max_long)} px long edge, but the "
                f"config resizes to up to {int(short_edge)} / {int(max_size)}: images will be upsampled (blurred); "
                f"rebuild with --max-short {max(int(self.max_short), int(short_edge))} "
                f"--max-long {max(int(self.max_long), int(max_size))}")


def _trim(lo, hi, box_lo, box_hi, limit):
    """``[lo, hi)`` shortened to ``limit`` pixels, dropping each time the end pixel that holds less of the box."""
    while hi - lo > limit:
        if box_lo - lo >= hi - box_hi:  # the first pixel holds less of the box than the last
            lo += 1
        else:
            hi -= 1
    return lo, hi
