"""`ddcache show`: draw a sample's boxes by category, with a legend, so a person can trust a cache."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from . import categories as C  # noqa: E402

STYLE = {  # category -> (colour, line width); rows/columns translucent so cells stay visible
    C.TABLE: ("#d62728", 2.0),
    C.CELL: ("#2ca02c", 1.0),
    C.ROW: ("#1f77b4", 1.2),
    C.COLUMN: ("#ff7f0e", 1.2),
}


def draw_sample(sample, out_path, categories=None, dpi=100):
    """Write a PNG of ``sample['image']`` with its boxes outlined per category and a legend."""
    img = sample["image"][:, :, ::-1]  # BGR -> RGB
    h, w = img.shape[:2]
    fig = plt.figure(figsize=(max(4.0, w / dpi), max(3.0, h / dpi) + 0.6), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, h / (h + 0.6 * dpi)])
    ax.imshow(img, interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    counts = {}
    for box, cid in zip(sample["boxes"], sample["category_ids"]):
        cid = int(cid)
        if categories is not None and cid not in categories:
            continue
        colour, lw = STYLE.get(cid, ("#9467bd", 1.0))
        alpha = 0.5 if cid in (C.ROW, C.COLUMN) else 0.95
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(mpatches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=lw, alpha=alpha))
        counts[cid] = counts.get(cid, 0) + 1
    handles = [mpatches.Patch(color=STYLE[c][0], label=f"{C.NAMES[c]} ({counts[c]})") for c in sorted(counts) if c in STYLE]
    prov = sample.get("provenance", {})
    title = f"{prov.get('source_file', '')}  table {prov.get('table_id', '')}  scale {prov.get('scale', 0):.2f} px/unit  {w}x{h}px"
    fig.legend(handles=handles, loc="upper left", ncol=max(1, len(handles)), fontsize=9, frameon=False, title=title,
               title_fontsize=8, bbox_to_anchor=(0, 1))
    fig.savefig(out_path, dpi=dpi)
    plt.close(fig)
    return counts


def legend_colours():
    """Category name -> colour, as used in the drawings (for the README and tests)."""
    return {C.NAMES[c]: colour for c, (colour, _) in STYLE.items()}

