"""Table cropper: a table annotation + its page -> one training sample in crop pixels.

Table mode renders only the table region (plus ``pad`` source units) at a
scale chosen per table, moves every cell box into the crop, and derives
ROW / COLUMN boxes from the grid. Page mode renders the whole page with a
TABLE box per table and the tables' cells. How many pixels a table gets is
the :class:`ddcache.resolution.Resolution` passed in (by default: the largest
size training uses, never more).
"""
import math

import numpy as np

from . import categories as C
from .errors import SkipSample
from .geometry import clip, shift, valid
from .input_limits import MAX_PIXELS
from .resolution import Resolution

MIN_BOX_PX = 1.0


def crop_region(box_px, page_w, page_h, resolution=Resolution()):
    """Integer pixel region (x0, y0, x1, y1) covering ``box_px``, clipped to the page and to the
    resolution's size limits (:meth:`Resolution.fit`); SkipSample if empty."""
    x0 = max(0, int(math.floor(box_px[0])))
    y0 = max(0, int(math.floor(box_px[1])))
    x1 = min(page_w, int(math.ceil(box_px[2])))
    y1 = min(page_h, int(math.ceil(box_px[3])))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise SkipSample("box_outside_page", f"table region {tuple(np.round(box_px, 1))} vs page {page_w}x{page_h}")
    return resolution.fit((x0, y0, x1, y1), box_px)


def check_inside_page(boxes_px, page_w, page_h):
    """SkipSample('box_outside_page') if any box lies entirely outside the page."""
    b = np.asarray(boxes_px).reshape(-1, 4)
    outside = (b[:, 2] <= 0) | (b[:, 0] >= page_w) | (b[:, 3] <= 0) | (b[:, 1] >= page_h)
    if outside.any():
        i = int(np.argmax(outside))
        raise SkipSample("box_outside_page", f"box {tuple(np.round(b[i], 1))} outside page {page_w}x{page_h} px")


def render_checked(page, scale, region, max_pixels=MAX_PIXELS):
    """``page.render(scale, region)`` unless it would allocate more than ``max_pixels``: SkipSample('too_large').

    Checked before rendering: a huge page box at a fixed dpi, or a raster
    source of 30000 x 30000 pixels, is refused without allocating it.
    """
    limit = int(max_pixels)
    needed = page.render_pixels(scale, region)
    if needed > limit:
        x0, y0, x1, y1 = region
        raise SkipSample("too_large", f"render of {x1 - x0}x{y1 - y0} px needs {needed} pixels, over --max-pixels {limit}")
    return page.render(scale, region)


def cell_boxes(cells, boxes_crop, crop_w, crop_h, table_index=0):
    """Clip boxed cells to the crop and drop degenerate ones.

    ``cells`` are the boxed cells, ``boxes_crop`` their boxes in crop pixels.
    Returns (boxes [N,4], attrs dict of lists, kept cells, dropped count).
    """
    clipped = clip(boxes_crop, crop_w, crop_h)
    keep = valid(clipped, MIN_BOX_PX)
    kept = [c for c, k in zip(cells, keep) if k]
    attrs = {
        "row": [c.row for c in kept],
        "col": [c.col for c in kept],
        "row_span": [c.row_span for c in kept],
        "col_span": [c.col_span for c in kept],
        "header": [int(c.header) for c in kept],
        "table": [table_index] * len(kept),
    }
    return clipped[keep], attrs, kept, int((~keep).sum())


def line_boxes(kept_cells, boxes, table_box, axis):
    """ROW (axis=0) or COLUMN (axis=1) boxes from span-1 cells, stretched across the table.

    A row's box spans the y-extent of its single-row cells and the table's
    full width; a column's spans the x-extent of its single-column cells and
    the table's full height. Rows/columns without such cells get no box.
    Returns (boxes [M,4], indices [M]).
    """
    index_attr, span_attr = ("row", "row_span") if axis == 0 else ("col", "col_span")
    groups = {}
    for cell, box in zip(kept_cells, boxes):
        if getattr(cell, span_attr) == 1:
            groups.setdefault(getattr(cell, index_attr), []).append(box)
    out, idx = [], []
    for i in sorted(groups):
        b = np.asarray(groups[i])
        if axis == 0:
            out.append([table_box[0], b[:, 1].min(), table_box[2], b[:, 3].max()])
        else:
            out.append([b[:, 0].min(), table_box[1], b[:, 2].max(), table_box[3]])
        idx.append(i)
    return np.asarray(out, dtype=np.float64).reshape(-1, 4), idx


def _assemble(parts):
    """Concatenate (boxes, category id, attrs) parts into the sample arrays."""
    boxes = [p[0] for p in parts if len(p[0])]
    cats = [np.full(len(p[0]), p[1], dtype=np.int32) for p in parts]
    names = ("row", "col", "row_span", "col_span", "header", "table")
    attrs = {n: np.concatenate([np.asarray(p[2][n], dtype=np.int32).reshape(-1) for p in parts]) for n in names}
    return (
        np.concatenate(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32),
        np.concatenate(cats) if cats else np.zeros(0, np.int32),
        attrs,
    )


def _line_attrs(idx, axis, table_index):
    n = len(idx)
    minus = [-1] * n
    return {
        "row": list(idx) if axis == 0 else minus,
        "col": list(idx) if axis == 1 else minus,
        "row_span": minus,
        "col_span": minus,
        "header": [0] * n,
        "table": [table_index] * n,
    }


def _provenance(annotation, page, scale, origin, dataset):
    return {
        "dataset": dataset,
        "split": annotation.split,
        "source_file": annotation.source_file,
        "annotation_file": annotation.annotation_file,
        "line_no": annotation.line_no,
        "table_id": annotation.table_id,
        "page_size": [page.width, page.height],
        "mediabox": list(page.mediabox),
        "page_box": list(page.box),
        "table_bbox_src": [float(v) for v in annotation.table_bbox],
        "scale": float(scale),
        "crop_origin": [int(origin[0]), int(origin[1])],
    }


def make_table_sample(annotation, page, dataset, resolution=Resolution(), pad=0.0, raster=False, max_pixels=MAX_PIXELS):
    """Render and annotate one table crop.

    ``resolution``: pixels per source unit and size limits; ``pad``: margin
    around the table box, source units; ``raster``: the page is a raster
    image (never upsampled); ``max_pixels``: the render size limit
    (:func:`render_checked`). Returns (sample dict per CONTRACTS.md with the
    image array, dropped-box count).
    """
    tb = np.asarray(annotation.table_bbox, dtype=np.float64)
    padded = tb + np.array([-pad, -pad, pad, pad], dtype=np.float64)
    scale = resolution.scale(padded[2] - padded[0], padded[3] - padded[1], raster)
    page_w, page_h = page.size_px(scale)
    cells = annotation.boxed_cells
    cells_px = page.to_pixels([c.bbox for c in cells], scale)
    check_inside_page(cells_px, page_w, page_h)
    region = crop_region(page.to_pixels(padded, scale)[0], page_w, page_h, resolution)
    image = render_checked(page, scale, region, max_pixels)
    crop_h, crop_w = image.shape[:2]
    to_crop = lambda b: shift(b, -region[0], -region[1])  # noqa: E731
    table_crop = clip(to_crop(page.to_pixels(tb, scale)), crop_w, crop_h)[0]
    boxes, attrs, kept, dropped = cell_boxes(cells, to_crop(cells_px), crop_w, crop_h)
    rows, row_idx = line_boxes(kept, boxes, table_crop, axis=0)
    cols, col_idx = line_boxes(kept, boxes, table_crop, axis=1)
    all_boxes, cats, all_attrs = _assemble(
        [(boxes, C.CELL, attrs), (rows, C.ROW, _line_attrs(row_idx, 0, 0)), (cols, C.COLUMN, _line_attrs(col_idx, 1, 0))]
    )
    sample = {
        "image": image,
        "boxes": all_boxes,
        "category_ids": cats,
        "attributes": all_attrs,
        "num_rows": annotation.num_rows,
        "num_cols": annotation.num_cols,
        "provenance": _provenance(annotation, page, scale, region[:2], dataset),
    }
    return sample, dropped


def make_page_sample(annotations, page, dataset, resolution=Resolution(), raster=False, max_pixels=MAX_PIXELS):
    """Render one whole page with a TABLE box per table and every table's cells.

    Returns (sample dict, dropped-box count). Provenance describes the first
    table and lists every table id under ``table_ids``.
    """
    scale = resolution.scale(page.width, page.height, raster)
    page_w, page_h = page.size_px(scale)
    region = resolution.fit((0, 0, page_w, page_h), (0.0, 0.0, page.width * scale, page.height * scale))
    image = render_checked(page, scale, region, max_pixels)
    crop_h, crop_w = image.shape[:2]
    parts, dropped = [], 0
    for t, ann in enumerate(annotations):
        cells = ann.boxed_cells
        cells_px = page.to_pixels([c.bbox for c in cells], scale)
        check_inside_page(cells_px, page_w, page_h)
        table_px = clip(page.to_pixels(ann.table_bbox, scale), crop_w, crop_h)
        boxes, attrs, _, d = cell_boxes(cells, cells_px, crop_w, crop_h, table_index=t)
        dropped += d
        table_attrs = {"row": [-1], "col": [-1], "row_span": [ann.num_rows], "col_span": [ann.num_cols], "header": [0], "table": [t]}
        parts.append((table_px, C.TABLE, table_attrs))
        parts.append((boxes, C.CELL, attrs))
    all_boxes, cats, all_attrs = _assemble(parts)
    prov = _provenance(annotations[0], page, scale, (0, 0), dataset)
    prov["table_ids"] = [a.table_id for a in annotations]
    prov["line_nos"] = [a.line_no for a in annotations]
    sample = {
        "image": image,
        "boxes": all_boxes,
        "category_ids": cats,
        "attributes": all_attrs,
        "num_rows": annotations[0].num_rows,
        "num_cols": annotations[0].num_cols,
        "provenance": prov,
    }
    return sample, dropped
