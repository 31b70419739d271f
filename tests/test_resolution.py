"""Resolution: the auto scale fills the training limits exactly, crops never exceed them, manifests round-trip."""
import math

import numpy as np
import pytest

from ddcache.crop import crop_region
from ddcache.errors import SkipSample
from ddcache.resolution import MAX_LONG, MAX_SHORT, Resolution


def test_auto_scale_is_the_largest_training_size_and_raster_is_never_upsampled():
    r = Resolution()
    assert (r.max_short, r.max_long) == (MAX_SHORT, MAX_LONG) == (1200, 1408)
    assert r.scale(704, 100) == pytest.approx(2.0)  # long side binds: 704 pt -> 1408 px
    assert r.scale(100, 110) == pytest.approx(12.0)  # short side binds: 100 -> 1200 px, 110 -> 1320 <= 1408
    assert r.scale(704, 100, raster=True) == 1.0
    assert Resolution(144).scale(704, 100) == 2.0 and Resolution(144).scale(1, 1) == 2.0
    with pytest.raises(SkipSample, match="degenerate_table"):
        r.scale(0, 10)
    for bad in ("high", 0, -72, True):
        with pytest.raises(ValueError):
            Resolution(bad)


@pytest.mark.parametrize("x0", [0.0, 12.3, 12.5, 12.7, 400.999])
def test_crop_windows_never_exceed_the_limits(x0):
    """A 1408.0 px wide box at a fractional offset covers 1409 pixels: one is trimmed, on the side it covers least."""
    r = Resolution()
    scale = r.scale(704.0, 300.0)
    box = np.array([x0, 7.6, x0 + 704.0 * scale, 7.6 + 300.0 * scale])
    x_lo, y_lo, x_hi, y_hi = crop_region(box, 4000, 4000, r)
    assert x_hi - x_lo == 1408 and y_hi - y_lo <= 1200
    assert x_lo <= box[0] + 0.5 and x_hi >= box[2] - 0.5  # less than half a pixel of the box is lost per side
    assert crop_region(box, 4000, 4000, Resolution(200)) == (
        math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3]))  # a fixed dpi: no limit


def test_tall_tables_get_the_long_limit_vertically():
    r = Resolution()
    scale = r.scale(100.0, 704.0)
    box = np.array([3.5, 0.4, 3.5 + 100 * scale, 0.4 + 704 * scale])
    x_lo, y_lo, x_hi, y_hi = crop_region(box, 4000, 4000, r)
    assert (y_hi - y_lo, x_hi - x_lo) == (1408, 201)


def test_from_manifest_and_below():
    r = Resolution("auto", 800, 1000)
    assert Resolution.from_manifest({"build_options": r.as_options()}) == r
    assert Resolution.from_manifest({"build_options": {}}) == Resolution()
    assert r.below(1200, 1408) == ("stored at most 800 px short edge / 1000 px long edge, but the config resizes to up "
                                   "to 1200 / 1408: images will be upsampled (blurred); rebuild with --max-short 1200 "
                                   "--max-long 1408")
    assert r.below(800, 1000) is None and Resolution().below(1200, 1408) is None
    assert Resolution(72).below(1200, 1408) is None  # per-table sizes: not known from the manifest
