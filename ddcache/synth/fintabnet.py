"""Synthetic FinTabNet: one-page PDFs drawn with reportlab + jsonl annotations in the release's exact format.

Layout written (as in ``fintabnet.tar.gz``)::

    OUT/pdf/<TICKER>/<YEAR>/page_<N>.pdf
    OUT/FinTabNet_1.0.0_table_{train,val,test}.jsonl   (with the table bbox)
    OUT/FinTabNet_1.0.0_cell_{train,val,test}.jsonl    (same lines without it)

Coordinates: PDF points in the page's user space, origin bottom-left, y up —
the space of the mediabox, which may start at a non-zero origin. Cell boxes
are tight around the drawn text: x from the text origin to origin +
``stringWidth``, y from baseline + descent to baseline + ascent of the font
(``pdfmetrics.getAscentDescent``), rounded to 2 decimals like the real data.
"""
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from reportlab import rl_config
from reportlab.lib.pagesizes import A4, letter
from reportlab.pdfbase import pdfdoc, pdfmetrics
from reportlab.pdfgen import canvas

from .layout import cell_tokens, place, random_financial_table, structure_tokens
from . import assign_splits

FAMILIES = {  # regular, bold: the 14 standard fonts need no embedding, so PDFs stay small
    "Helvetica": ("Helvetica", "Helvetica-Bold"),
    "Times-Roman": ("Times-Roman", "Times-Bold"),
    "Courier": ("Courier", "Courier-Bold"),
}
_TICKERS = ("ABC", "FDX", "MNST", "XOM", "KO", "JNJ", "PG", "DE", "HON", "MMM", "CAT", "ADP", "ECL", "GIS",
            "HSY", "ITW", "LOW", "NKE", "ORCL", "PEP", "ROK", "SYY", "TGT", "UNP", "VFC", "WMT", "ZBH", "AAL")
_WORDS = ("the", "company", "fiscal", "year", "net", "increase", "decrease", "primarily", "due", "to", "higher",
          "revenue", "operating", "costs", "compared", "with", "prior", "period", "segment", "results", "million",
          "were", "driven", "by", "lower", "demand", "in", "our", "international", "markets", "and", "pricing",
          "following", "table", "summarizes", "cash", "flows", "obligations", "as", "of", "December")
_HEADINGS = ("Management's Discussion and Analysis", "Notes to Consolidated Financial Statements",
             "Item 7. Results of Operations", "Item 8. Financial Statements and Supplementary Data",
             "Item 5. Market for Registrant's Common Equity", "Critical Accounting Estimates", "Commitments")
_TITLES = ("Contractual Obligations", "Results of Operations", "Quarterly Financial Data", "Income Taxes",
           "Liquidity and Capital Resources", "Segment Information", "Selected Financial Data")

SUP_SCALE = 0.65  # superscript size relative to the cell's font size
DARK_RULE_MAX = 0.6  # rules are grey >= this level (0 black, 1 white) so ink checks can tell them from text


@dataclass
class Text:
    """One string drawn at baseline origin (x, y) in user-space points."""

    font: str
    size: float
    x: float
    y: float
    text: str


@dataclass
class Rule:
    """A straight grey line from (x0, y0) to (x1, y1), user-space points."""

    x0: float
    y0: float
    x1: float
    y1: float
    grey: float
    width: float


@dataclass
class PagePlan:
    """Everything on one page: mediabox (x0, y0, x1, y1 in points), drawing items, table annotations.

    ``tables``: list of ``(html, bbox)`` where ``html`` is the release's
    ``{"structure": {"tokens": [...]}, "cells": [...]}`` and ``bbox`` the
    table box (x0, y0, x1, y1), user space, y up.
    """

    mediabox: tuple
    items: list = field(default_factory=list)
    tables: list = field(default_factory=list)


def _ascent_descent(font, size):
    ascent, descent = pdfmetrics.getAscentDescent(font, size)
    return ascent, descent


@lru_cache(maxsize=65536)
def _width(text, font, size):
    """Advance width of ``text`` in points (cached: the same labels and numbers recur on every page)."""
    return pdfmetrics.stringWidth(text, font, size)


def _wrap(rng, font, size, width, n_lines):
    """Random prose wrapped to ``width`` points; returns the lines."""
    space = _width(" ", font, size)
    lines, current, used = [], [], 0.0
    while len(lines) < n_lines:
        word = rng.choice(_WORDS)
        w = _width(word, font, size)
        if current and used + space + w > width:
            lines.append(" ".join(current))
            current, used = [word], w
        else:
            used += (space if current else 0.0) + w
            current.append(word)
    return lines


def _paragraph(rng, plan, font, size, x, top, width, n_lines):
    """Add prose lines below ``top`` (y up); returns the y of the paragraph's lower edge."""
    ascent, descent = _ascent_descent(font, size)
    baseline = top - ascent
    for line in _wrap(rng, font, size, width, n_lines):
        plan.items.append(Text(font, size, x, baseline, line))
        baseline -= size * 1.25
    return baseline + size * 1.25 + descent


def _fit_table(rng, family, size, avail_w, avail_h):
    """Generate a table that fits in avail_w x avail_h points.

    Returns ``(table, placement, (regular font, bold font, ascent, descent))``
    with the placement in points, or None when not even a small table fits.
    """
    regular, bold = FAMILIES[family]
    ascent, descent = _ascent_descent(regular, size)

    def measure(text, is_bold):
        return _width(text, bold if is_bold else regular, size)

    pad_x = size * rng.uniform(0.4, 1.2)
    pad_y = size * rng.uniform(0.12, 0.4)
    row_h = (ascent - descent) + 2 * pad_y
    max_rows = min(16, int(avail_h / row_h) - 3)
    max_cols = 5
    for _ in range(10):
        if max_rows < 3:
            return None
        table = random_financial_table(rng, max_body_rows=max_rows, max_value_cols=max_cols)
        placement = place(table, measure, ascent, descent, pad_x, pad_y, sup_scale=SUP_SCALE)
        if placement.width > avail_w:
            max_cols = max(1, max_cols - 1)
        elif placement.height > avail_h:
            max_rows -= 2
        else:
            return table, placement, (regular, bold, ascent, descent)
    return None


def _add_table(rng, plan, table, placement, fonts, size, left, top):
    """Put a placed table with its top-left corner at (left, top) (user space, y up); returns its bbox."""
    regular, bold, ascent, descent = fonts
    ruled = rng.random() < 0.35
    grey = rng.uniform(DARK_RULE_MAX + 0.05, 0.85)
    if ruled:
        # each cell's top and left edge plus the table's bottom and right edge: every segment once
        w, h = placement.width, placement.height
        segments = [(0, h, w, h), (w, 0, w, h)]
        for pc in placement.cells:
            x0, t, x1, b = pc.area
            segments += [(x0, t, x1, t), (x0, t, x0, b)]
        for seg in segments:
            plan.items.append(Rule(left + seg[0], top - seg[1], left + seg[2], top - seg[3], grey, 0.5))
    elif table.header_rows and rng.random() < 0.6:
        y = top - placement.row_edges[table.header_rows]
        plan.items.append(Rule(left + placement.col_edges[1], y, left + placement.width, y, grey, 0.6))
    cells, union = [], None
    for cell, pc in zip(table.cells, placement.cells):
        entry = {"tokens": cell_tokens(cell)}
        if pc.box is not None:
            font = bold if cell.bold else regular
            for x, baseline, text in pc.lines:
                plan.items.append(Text(font, size, left + x, top - baseline, text))
            if pc.sup is not None:
                x, baseline, text = pc.sup
                plan.items.append(Text(font, size * SUP_SCALE, left + x, top - baseline, text))
            x0, t, x1, b = pc.box
            box = (left + x0, top - b, left + x1, top - t)
            entry["bbox"] = [round(v, 2) for v in box]
            union = box if union is None else (min(union[0], box[0]), min(union[1], box[1]),
                                               max(union[2], box[2]), max(union[3], box[3]))
        cells.append(entry)
    if union is None:
        return None
    # the real table box is the union of the cells, now and then a hair larger
    if rng.random() < 0.3:
        union = (union[0] - rng.uniform(0, 1.5), union[1] - rng.uniform(0, 1.5),
                 union[2] + rng.uniform(0, 1.5), union[3] + rng.uniform(0, 1.5))
    html = {"structure": {"tokens": structure_tokens(table, sections=False)}, "cells": cells}
    plan.tables.append((html, list(union)))
    return union


def plan_page(rng, page_number, force_two_tables=False, force_offset=False):
    """Compose one random page: heading, prose, 1-2 tables, ``page_number`` at the foot. Pure: no I/O.

    ``rng`` is a ``random.Random``. Letter (612x792 pt) mostly, A4 sometimes;
    the mediabox origin is (0, 0) unless the page is drawn "offset" (random
    origin, as some real PDFs have). Returns a :class:`PagePlan`.
    """
    width, height = A4 if rng.random() < 0.15 else letter
    if force_offset or rng.random() < 0.15:
        mx0, my0 = rng.choice(((18.0, 36.0), (36.0, 0.0), (0.0, 18.0), (float(rng.randint(5, 60)), float(rng.randint(5, 60)))))
    else:
        mx0, my0 = 0.0, 0.0
    plan = PagePlan((mx0, my0, mx0 + width, my0 + height))
    margin_l, margin_r = rng.uniform(40, 72), rng.uniform(40, 72)
    left, right = mx0 + margin_l, mx0 + width - margin_r
    text_w = right - left
    bottom_limit = my0 + rng.uniform(50, 65)  # page number lives below
    body_family = rng.choice(("Times-Roman", "Helvetica"))
    body_reg, body_bold = FAMILIES[body_family]

    y = my0 + height - rng.uniform(45, 72)
    head_size = rng.choice((11, 12, 13, 14))
    ascent, descent = _ascent_descent(body_bold, head_size)
    plan.items.append(Text(body_bold, head_size, left, y - ascent, rng.choice(_HEADINGS)))
    y -= ascent - descent + rng.uniform(8, 16)
    y = _paragraph(rng, plan, body_reg, 9.5, left, y, text_w, rng.randint(1, 5)) - rng.uniform(10, 20)

    n_tables = 2 if force_two_tables or rng.random() < 0.3 else 1
    for k in range(n_tables):
        if rng.random() < 0.5:
            ascent, descent = _ascent_descent(body_bold, 10)
            plan.items.append(Text(body_bold, 10, left, y - ascent, rng.choice(_TITLES)))
            y -= ascent - descent + 5
        family = rng.choice(tuple(FAMILIES))
        size = rng.choice((7, 7.5, 8, 8.5, 9, 9.5, 10, 11))
        avail_h = y - bottom_limit - 10
        if n_tables == 2 and k == 0:
            avail_h = avail_h * rng.uniform(0.4, 0.55)  # leave room for the second table
        fitted = _fit_table(rng, family, size, text_w, avail_h)
        if fitted is None:
            break
        table, placement, fonts = fitted
        slack = text_w - placement.width
        x = left + (0.0 if rng.random() < 0.5 else rng.uniform(0, slack))
        _add_table(rng, plan, table, placement, fonts, size, x, y)
        y = y - placement.height - rng.uniform(12, 24)
        if k + 1 < n_tables and y - bottom_limit > 120:
            y = _paragraph(rng, plan, body_reg, 9.5, left, y, text_w, rng.randint(1, 2)) - rng.uniform(10, 20)

    number = str(page_number)
    plan.items.append(Text(body_reg, 9, mx0 + width / 2 - _width(number, body_reg, 9) / 2,
                           my0 + rng.uniform(25, 40), number))
    return plan


def write_pdf(path, plan):
    """Draw ``plan`` into a one-page PDF at ``path``; byte-identical for identical plans."""
    c = canvas.Canvas(str(path), pagesize=(plan.mediabox[2] - plan.mediabox[0], plan.mediabox[3] - plan.mediabox[1]),
                      invariant=1)
    font = None
    rules = {}
    for item in plan.items:
        if isinstance(item, Text):
            if font != (item.font, item.size):
                c.setFont(item.font, item.size)
                font = (item.font, item.size)
            c.drawString(item.x, item.y, item.text)
        else:
            rules.setdefault((item.grey, item.width), []).append((item.x0, item.y0, item.x1, item.y1))
    for (grey, width), segments in rules.items():  # one path per rule style
        c.setStrokeGray(grey)
        c.setLineWidth(width)
        c.lines(segments)
    c.showPage()
    # reportlab only writes MediaBox [0 0 w h]; an explicit one gives the page a non-zero origin
    # while all drawing above already happened in that user space.
    c._doc.Pages.pages[-1].MediaBox = pdfdoc.PDFArray(list(plan.mediabox))
    # binary Flate streams like real PDFs (reportlab adds ASCII85 by default: slower, bigger);
    # the switch is global, so it is restored right after this file is written
    a85 = rl_config.useA85
    rl_config.useA85 = 0
    try:
        c.save()
    finally:
        rl_config.useA85 = a85


def write_fintabnet_sample(out_dir, pages=24, seed=0):
    """Write ``pages`` one-page PDFs and the six jsonl files under ``out_dir``; returns the summary dict.

    Deterministic per ``seed``. Each page's randomness is derived from
    (seed, page index) alone, so a page does not depend on how many come
    before it. Splits are assigned per page (~80/10/10).
    """
    out = Path(out_dir)
    (out / "pdf").mkdir(parents=True, exist_ok=True)
    split_of = assign_splits(pages, random.Random(f"fintabnet-splits:{seed}"))
    files = {}
    for kind in ("table", "cell"):
        for split in ("train", "val", "test"):
            files[kind, split] = open(out / f"FinTabNet_1.0.0_{kind}_{split}.jsonl", "w", encoding="utf-8", newline="\n")
    counts = {"train": 0, "val": 0, "test": 0}
    used, table_id = set(), 0
    try:
        for index in range(pages):
            rng = random.Random(f"fintabnet:{seed}:{index}")
            ticker, year, number = rng.choice(_TICKERS), rng.randint(2008, 2019), rng.randint(1, 260)
            while (ticker, year, number) in used:  # rare collision: next page number, deterministically
                number += 1
            used.add((ticker, year, number))
            filename = f"{ticker}/{year}/page_{number}.pdf"
            plan = plan_page(rng, number, force_two_tables=index % 10 == 1, force_offset=index % 10 == 2)
            target = out / "pdf" / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            write_pdf(target, plan)
            split = split_of[index]
            for html, bbox in plan.tables:
                table_id += 1
                line = {"table_id": table_id, "html": html, "split": split, "filename": filename}
                files["cell", split].write(json.dumps(line) + "\n")
                line["bbox"] = bbox
                files["table", split].write(json.dumps(line) + "\n")
                counts[split] += 1
    finally:
        for f in files.values():
            f.close()
    return {"dataset": "fintabnet", "pages": pages, "tables": table_id, "splits": counts, "out": str(out)}
