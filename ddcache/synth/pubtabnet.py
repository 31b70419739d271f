"""Synthetic PubTabNet: PNG table images drawn with OpenCV + ``PubTabNet_2.0.0.jsonl``.

Layout written (as in the 2.0.0 release)::

    OUT/train/<name>.png  OUT/val/<name>.png  OUT/test/<name>.png
    OUT/PubTabNet_2.0.0.jsonl      one line per image

Coordinates: PNG pixels, origin top-left, y down. A cell box is the tight
box of the cell's ink, measured on the drawn text itself: [x0, y0, x1, y1]
with x1/y1 one past the last inked column/row (pixel edges), so a box's
width is the ink's width in pixels.
"""
import json
import math
import random
from pathlib import Path

import cv2
import numpy as np

from . import assign_splits
from .layout import cell_tokens, place, random_scientific_table, structure_tokens

FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX)
SUP_SCALE = 0.65  # superscript scale relative to the cell's font scale
RULE_MIN_GREY = 170  # rules are drawn at least this light (0 black, 255 white) so ink checks can tell them from text


def render_table(rng):
    """Draw one random table image. Pure apart from randomness from ``rng`` (a ``random.Random``).

    Returns ``(image, html)``: ``image`` uint8 [H, W, 3] BGR, white
    background; ``html`` the release's ``{"structure": {"tokens"}, "cells"}``
    with pixel boxes (top-left origin) for non-empty cells.
    """
    table = random_scientific_table(rng, max_body_rows=rng.randint(3, 14), max_cols=rng.randint(2, 7))
    font = rng.choice(FONTS)
    scale = rng.uniform(0.35, 0.55)

    def thickness(bold):
        return 2 if bold else 1

    def measure(text, bold):
        return float(cv2.getTextSize(text, font, scale, thickness(bold))[0][0])

    (_, cap_h), base = cv2.getTextSize("Ag", font, scale, 2)
    ascent, descent = float(cap_h + 1), -float(base)
    pad_x = rng.uniform(4, 12)
    pad_y = rng.uniform(2, 6)
    placement = place(table, measure, ascent, descent, pad_x, pad_y, line_gap=0.3, sup_scale=SUP_SCALE)

    margin = rng.randint(3, 16)
    width = int(math.ceil(placement.width)) + 2 * margin
    height = int(math.ceil(placement.height)) + 2 * margin
    image = np.full((height, width, 3), 255, np.uint8)

    grey = rng.randint(RULE_MIN_GREY, 215)
    style = rng.choices(("grid", "booktabs", "none"), (0.3, 0.5, 0.2))[0]
    colour = (grey, grey, grey)

    def hline(y, x0=0.0, x1=placement.width):
        yy = margin + int(round(y))
        cv2.line(image, (margin + int(round(x0)), yy), (margin + int(round(x1)), yy), colour, 1)

    if style == "grid":
        for pc in placement.cells:
            x0, t, x1, b = (margin + int(round(v)) for v in pc.area)
            cv2.rectangle(image, (x0, t), (x1, b), colour, 1)
    elif style == "booktabs":
        hline(0)
        hline(placement.row_edges[table.header_rows])
        hline(placement.height)

    cells = []
    for cell, pc in zip(table.cells, placement.cells):
        entry = {"tokens": cell_tokens(cell)}
        if pc.box is not None:
            ax0, at, ax1, ab = pc.area
            # search window: the cell's grid area plus a little, since glyph ink may overhang the metrics
            wx0, wy0 = max(0, margin + int(ax0) - 3), max(0, margin + int(at) - 3)
            wx1, wy1 = min(width, margin + int(math.ceil(ax1)) + 3), min(height, margin + int(math.ceil(ab)) + 3)
            window = np.zeros((wy1 - wy0, wx1 - wx0), np.uint8)  # this cell's text alone, to measure its ink
            for x, baseline, text in pc.lines:
                org = (margin + int(round(x)), margin + int(round(baseline)))
                cv2.putText(image, text, org, font, scale, (0, 0, 0), thickness(cell.bold), cv2.LINE_AA)
                cv2.putText(window, text, (org[0] - wx0, org[1] - wy0), font, scale, 255, thickness(cell.bold), cv2.LINE_AA)
            if pc.sup is not None:
                x, baseline, text = pc.sup
                org = (margin + int(round(x)), margin + int(round(baseline)))
                for target, value, origin in ((image, (0, 0, 0), org), (window, 255, (org[0] - wx0, org[1] - wy0))):
                    cv2.putText(target, text, origin, font, scale * SUP_SCALE, value, 1, cv2.LINE_AA)
            ys, xs = np.nonzero(window)
            if len(xs):
                entry["bbox"] = [int(xs.min()) + wx0, int(ys.min()) + wy0, int(xs.max()) + 1 + wx0, int(ys.max()) + 1 + wy0]
            else:  # nothing inked (cannot happen with visible text): annotate as an empty cell
                entry["tokens"] = []
        cells.append(entry)
    html = {"structure": {"tokens": structure_tokens(table, sections=True)}, "cells": cells}
    return image, html


def write_pubtabnet_sample(out_dir, pages=24, seed=0):
    """Write ``pages`` table images and ``PubTabNet_2.0.0.jsonl`` under ``out_dir``; returns the summary dict.

    Deterministic per ``seed``; each image's randomness comes from (seed,
    image index) alone. Splits ~80/10/10 by image.
    """
    out = Path(out_dir)
    for split in ("train", "val", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
    split_of = assign_splits(pages, random.Random(f"pubtabnet-splits:{seed}"))
    counts = {"train": 0, "val": 0, "test": 0}
    used = set()
    with open(out / "PubTabNet_2.0.0.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for index in range(pages):
            rng = random.Random(f"pubtabnet:{seed}:{index}")
            pmc, fig, k = rng.randint(1000000, 6999999), rng.randint(1, 30), rng.randint(0, 3)
            while (pmc, fig, k) in used:
                k += 1
            used.add((pmc, fig, k))
            name = f"PMC{pmc}_{fig:03d}_{k:02d}.png"
            image, html = render_table(rng)
            split = split_of[index]
            if not cv2.imwrite(str(out / split / name), image):
                raise OSError(f"could not write {out / split / name}")
            f.write(json.dumps({"filename": name, "split": split, "imgid": index, "html": html}) + "\n")
            counts[split] += 1
    return {"dataset": "pubtabnet", "pages": pages, "tables": pages, "splits": counts, "out": str(out)}
