"""`ddcache show`: draw a sample's boxes by category, with a legend, so a person can trust a cache."""
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import categories as C  # noqa: E402

STYLE = {  # category -> (colour, line width); rows/columns translucent so cells stay visible
    C.TABLE: ("#d62728", 2.0),
    C.CELL: ("#2ca02c", 1.0),
    C.ROW: ("#1f77b4", 1.2),
    C.COLUMN: ("#ff7f0e", 1.2),
}
_FALLBACK = ("#9467bd", 1.0)
MAX_DRAWN_PIXELS = 1 << 22  # drawings of larger images are subsampled (memory: matplotlib works in float64)


def draw_boxes(image_bgr, boxes, category_ids, out_path, title="", categories=None, dpi=100):
    """Write a PNG of ``image_bgr`` with ``boxes`` (xyxy px) outlined per category id and a legend with counts.

    Shared by ``ddcache show`` and ``ddtrain predict`` so ground truth and
    detections look the same. Returns {category id: count drawn}.
    """
    img = np.asarray(image_bgr)[:, :, ::-1]  # BGR -> RGB
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    h, w = img.shape[:2]
    # matplotlib resamples through float64 copies (24 bytes per pixel, several of them): a 5000 x 5000 page
    # (within the record limit) needs over 1.5 GB. Larger images are drawn every `step`-th pixel; the boxes
    # keep their pixel coordinates (``extent``), only the drawing is smaller.
    step = max(1, math.ceil(math.sqrt(h * w / MAX_DRAWN_PIXELS)))
    shown = img[::step, ::step]
    dh, dw = shown.shape[:2]
    fig = plt.figure(figsize=(max(4.0, dw / dpi), max(3.0, dh / dpi) + 0.6), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, dh / (dh + 0.6 * dpi)])
    ax.imshow(shown, interpolation="nearest", extent=(0, w, h, 0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    counts = {}
    for box, cid in zip(boxes, category_ids):
        cid = int(cid)
        if categories is not None and cid not in categories:
            continue
        colour, lw = STYLE.get(cid, _FALLBACK)
        alpha = 0.5 if cid in (C.ROW, C.COLUMN) else 0.95  # rows/columns translucent so cells stay visible
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(mpatches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=lw, alpha=alpha))
        counts[cid] = counts.get(cid, 0) + 1
    handles = [mpatches.Patch(color=STYLE.get(c, _FALLBACK)[0], label=f"{C.NAMES.get(c, c)} ({counts[c]})") for c in sorted(counts)]
    fig.legend(handles=handles, loc="upper left", ncol=max(1, len(handles)), fontsize=9, frameon=False, title=title,
               title_fontsize=8, bbox_to_anchor=(0, 1))
    buffer = io.BytesIO()  # rendered in memory, then written by us: a failed write (full disk) raises, never passes
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    with open(out_path, "wb") as f:
        f.write(buffer.getbuffer())
    return counts


def draw_sample(sample, out_path, categories=None, dpi=100):
    """Write a PNG of a cache sample with its boxes per category and a provenance title."""
    h, w = sample["image"].shape[:2]
    prov = sample.get("provenance", {})
    scale = prov.get("scale")
    scale = f"{scale:.2f}" if isinstance(scale, (int, float)) else "?"
    source = str(prov.get("source_file", ""))[-120:]  # provenance values are checked scalars; keep the title short
    title = f"{source}  table {str(prov.get('table_id', ''))[:40]}  scale {scale} px/unit  {w}x{h}px"
    return draw_boxes(sample["image"], sample["boxes"], sample["category_ids"], out_path, title, categories, dpi)


def legend_colours():
    """Category name -> colour, as used in the drawings (for the README and tests)."""
    return {C.NAMES[c]: colour for c, (colour, _) in STYLE.items()}

