"""Synthetic FinTabNet / PubTabNet samples: determinism, exact raw format, consistent structure, boxes on the ink."""
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pypdfium2 as pdfium
import pytest

from ddcache.synth import assign_splits, write_sample

from conftest import real_lines_path

SPLITS = ("train", "val", "test")
SCALE = 2.0  # render scale for ink checks (144 dpi)
DARK = 128  # grey level below which a pixel counts as ink (rules are drawn lighter than this)
MARKUP = ("<b>", "</b>", "<sup>", "</sup>")
TOL = 2  # px of tolerance around boxes: glyph ink may overhang the font's ascent/advance by a hair


@pytest.fixture(scope="module")
def fin(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_fin")
    return out, write_sample("fintabnet", out, pages=24, seed=0)


@pytest.fixture(scope="module")
def ptn(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_ptn")
    return out, write_sample("pubtabnet", out, pages=24, seed=0)


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _fin_tables(root):
    return {s: _lines(root / f"FinTabNet_1.0.0_table_{s}.jsonl") for s in SPLITS}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ independent structure checker

_ATTR = re.compile(r'(rowspan|colspan)="(\d+)"')


def _rows(tokens):
    """Token list -> rows of (row_span, col_span); written independently of ddcache.grid."""
    rows, current, i = [], None, 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "<tr>":
            current = []
        elif tok == "</tr>":
            rows.append(current)
            current = None
        elif tok == "<td>":
            current.append((1, 1))
        elif tok == "<td":
            spans = {"rowspan": 1, "colspan": 1}
            i += 1
            while tokens[i] != ">":
                name, value = _ATTR.fullmatch(tokens[i].strip()).groups()
                spans[name] = int(value)
                i += 1
            current.append((spans["rowspan"], spans["colspan"]))
        i += 1
    return rows


def _check_grid(tokens, num_cells):
    """Assert the structure tiles a rectangle; returns the cells as (row, col, row_span, col_span)."""
    rows = _rows(tokens)
    assert rows and all(rows)
    width = sum(cs for _, cs in rows[0])
    taken, cells = set(), []
    for r, row in enumerate(rows):
        c = 0
        for rs, cs in row:
            while (r, c) in taken:
                c += 1
            cells.append((r, c, rs, cs))
            for dr in range(rs):
                for dc in range(cs):
                    assert (r + dr, c + dc) not in taken, "overlapping spans"
                    taken.add((r + dr, c + dc))
            c += cs
    for r in range(len(rows)):
        assert sum(1 for (rr, _) in taken if rr == r) == width, f"row {r} does not fill {width} columns"
    assert all(rr < len(rows) and cc < width for rr, cc in taken), "span past the table"
    assert num_cells == sum(1 for t in tokens if t.startswith("<td"))
    return cells


def test_checker_catches_a_bad_row():
    bad = ["<table>", "<tr>", "<td", ' colspan="2"', ">", "</td>", "</tr>", "<tr>", "<td>", "</td>", "</tr>", "</table>"]
    with pytest.raises(AssertionError):
        _check_grid(bad, 2)


def test_layout_tiles_the_table_and_keeps_text_inside_its_cell():
    import random

    from ddcache.synth.layout import cell_tokens, place, random_financial_table, random_scientific_table, structure_tokens

    for seed in range(150):
        rng = random.Random(seed)
        for table, sections in ((random_financial_table(rng), False), (random_scientific_table(rng), True)):
            cells = _check_grid(structure_tokens(table, sections), len(table.cells))
            assert cells == [(c.row, c.col, c.row_span, c.col_span) for c in table.cells]  # html order = grid order
            # a fake monospace font: 6 units per character, ascent 8, descent -2
            placed = place(table, lambda text, bold: 6.0 * len(text), 8.0, -2.0, pad_x=3.0, pad_y=1.5)
            covered = 0.0
            for cell, pc in zip(table.cells, placed.cells):
                ax0, at, ax1, ab = pc.area
                covered += (ax1 - ax0) * (ab - at)
                assert (pc.box is None) == (not cell.lines) == (cell_tokens(cell) == [])
                if pc.box is not None:
                    x0, t, x1, b = pc.box
                    assert ax0 <= x0 < x1 <= ax1 + 1e-9 and at <= t < b <= ab + 1e-9
                    # tight: exactly the advance width of the text (+ the superscript at 0.65 size)
                    widths = [6.0 * len(line) for line in cell.lines]
                    widths[-1] += 0.65 * 6.0 * len(cell.sup)
                    assert abs((x1 - x0) - max(widths)) < 1e-6
                    if cell.align == "left":  # indented by whole text heights (10 units) per level
                        assert abs(x0 - (ax0 + 3.0 + 10.0 * cell.indent)) < 1e-6
            # the cell areas tile the table exactly (no overlap is possible: the grid check above)
            assert abs(covered - placed.width * placed.height) < 1e-6 * placed.width * placed.height


# ------------------------------------------------------------------ API, determinism, splits


def test_unknown_dataset_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        write_sample("tablebank", tmp_path)


def test_splits_are_deterministic_and_non_empty():
    import random

    for n in (10, 11, 24, 101):
        a = assign_splits(n, random.Random(5))
        assert a == assign_splits(n, random.Random(5))
        assert {s: a.count(s) for s in SPLITS}["train"] >= 0.75 * n and all(a.count(s) >= 1 for s in SPLITS)


@pytest.mark.parametrize("dataset", ["fintabnet", "pubtabnet"])
def test_same_seed_same_bytes_other_seed_other_data(dataset, tmp_path, fin, ptn):
    root, summary = fin if dataset == "fintabnet" else ptn
    again = write_sample(dataset, tmp_path / "again", pages=24, seed=0)
    assert again["tables"] == summary["tables"] and again["splits"] == summary["splits"]
    assert _files(root) == _files(tmp_path / "again")  # every jsonl, PDF and PNG byte-identical
    write_sample(dataset, tmp_path / "other", pages=24, seed=1)
    first, other = _files(root), _files(tmp_path / "other")
    jsonl = [k for k in first if k.endswith(".jsonl")]
    assert jsonl and all(first[k] != other[k] for k in jsonl)


# ------------------------------------------------------------------ FinTabNet format


def test_fintabnet_layout_and_summary(fin):
    root, summary = fin
    tables = _fin_tables(root)
    assert summary["dataset"] == "fintabnet" and summary["pages"] == 24 and summary["out"] == str(root)
    assert summary["splits"] == {s: len(tables[s]) for s in SPLITS} and all(summary["splits"].values())
    assert summary["tables"] == sum(summary["splits"].values())
    pdfs = sorted(p.relative_to(root / "pdf").as_posix() for p in (root / "pdf").rglob("*.pdf"))
    assert len(pdfs) == 24 and all(re.fullmatch(r"[A-Z]{2,5}/(19|20)\d\d/page_\d+\.pdf", p) for p in pdfs)
    assert sorted({t["filename"] for s in SPLITS for t in tables[s]}) == pdfs
    # a page (and all its tables) belongs to one split
    split_of = {}
    for s in SPLITS:
        for t in tables[s]:
            assert split_of.setdefault(t["filename"], s) == s


def test_fintabnet_lines_match_the_real_format(fin):
    root, _ = fin
    real = _lines(real_lines_path())
    real_keys = [list(r.keys()) for r in real]
    assert all(k == real_keys[0] for k in real_keys)
    ids = []
    for s in SPLITS:
        table_lines = _lines(root / f"FinTabNet_1.0.0_table_{s}.jsonl")
        cell_lines = _lines(root / f"FinTabNet_1.0.0_cell_{s}.jsonl")
        assert cell_lines == [{k: v for k, v in t.items() if k != "bbox"} for t in table_lines]
        assert all(list(c.keys()) == [k for k in real_keys[0] if k != "bbox"] for c in cell_lines)
        for t in table_lines:
            assert list(t.keys()) == real_keys[0]
            for key in real_keys[0]:
                assert type(t[key]) is type(real[0][key]), key
            assert t["split"] == s
            assert list(t["html"].keys()) == list(real[0]["html"].keys())
            assert list(t["html"]["structure"].keys()) == ["tokens"]
            tokens = t["html"]["structure"]["tokens"]
            assert tokens[0] == "<table>" and tokens[-1] == "</table>"
            assert not {"<thead>", "<tbody>", "</thead>", "</tbody>"} & set(tokens)
            assert set(tokens) <= {"<table>", "</table>", "<tr>", "</tr>", "<td>", "</td>", "<td", ">"} | {
                t for t in tokens if re.fullmatch(r' (rowspan|colspan)="\d+"', t)}
            assert len(t["bbox"]) == 4 and all(isinstance(v, float) for v in t["bbox"])
            for cell in t["html"]["cells"]:
                assert all(isinstance(tok, str) and (len(tok) == 1 or tok in MARKUP) for tok in cell["tokens"])
                if not cell["tokens"]:
                    assert list(cell.keys()) == ["tokens"]  # empty cells carry no bbox
                    continue
                assert list(cell.keys()) == ["tokens", "bbox"]
                x0, y0, x1, y1 = cell["bbox"]
                assert all(isinstance(v, float) and round(v, 2) == v for v in cell["bbox"])
                assert x1 > x0 and y1 > y0
            boxes = np.array([c["bbox"] for c in t["html"]["cells"] if "bbox" in c])
            union = [boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max()]
            # table box = union of the (rounded) cell boxes, at most a little larger
            assert np.all(np.abs(np.array(t["bbox"]) - union) <= 1.6)
            assert t["bbox"][0] <= union[0] + 0.01 and t["bbox"][2] >= union[2] - 0.01
            ids.append(t["table_id"])
    assert len(ids) == len(set(ids))


def test_fintabnet_structure_is_consistent(fin):
    root, _ = fin
    for s in SPLITS:
        for t in _lines(root / f"FinTabNet_1.0.0_table_{s}.jsonl"):
            _check_grid(t["html"]["structure"]["tokens"], len(t["html"]["cells"]))


# ------------------------------------------------------------------ FinTabNet geometry on the rendered ink


def _render_gray(path):
    doc = pdfium.PdfDocument(str(path))
    try:
        page = doc[0]
        mediabox = tuple(page.get_mediabox())
        img = page.render(scale=SCALE).to_numpy()[:, :, :3].min(axis=2)
    finally:
        doc.close()
    return img, mediabox


def _to_px(box, mediabox):
    """FACTS §1: PDF points (bottom-left origin, page user space) -> pixels (top-left origin)."""
    mx0, my0, _, my1 = mediabox
    h = my1 - my0
    x0, y0, x1, y1 = box
    return SCALE * (x0 - mx0), SCALE * (h - (y1 - my0)), SCALE * (x1 - mx0), SCALE * (h - (y0 - my0))


def _ink_report(dark, table_box, cell_boxes):
    """Checks shared by both datasets; boxes in pixels. Returns (ink outside cells, ink in table)."""
    h, w = dark.shape
    inside = np.zeros_like(dark)
    for x0, y0, x1, y1 in cell_boxes:
        a, b = max(0, int(np.floor(x0)) - TOL), max(0, int(np.floor(y0)) - TOL)
        c, d = min(w, int(np.ceil(x1)) + TOL), min(h, int(np.ceil(y1)) + TOL)
        assert dark[b:d, a:c].any(), f"no ink in cell box {(x0, y0, x1, y1)}"
        # tight: the ink spans the box up to glyph side bearings (Courier "(", ")": ~0.3 em each; box height ~0.8 em)
        ys, xs = np.nonzero(dark[b:d, a:c])
        assert xs.max() - xs.min() + 1 >= (x1 - x0) - 0.8 * (y1 - y0) and ys.max() - ys.min() + 1 >= 0.4 * (y1 - y0)
        inside[b:d, a:c] = True
    x0, y0, x1, y1 = table_box
    a, b, c, d = max(0, int(x0) - TOL), max(0, int(y0) - TOL), min(w, int(np.ceil(x1)) + TOL), min(h, int(np.ceil(y1)) + TOL)
    region, covered = dark[b:d, a:c], inside[b:d, a:c]
    return int((region & ~covered).sum()), int(region.sum())


def test_fintabnet_boxes_sit_on_the_ink(fin):
    root, _ = fin
    by_page = {}
    for s in SPLITS:
        for t in _lines(root / f"FinTabNet_1.0.0_table_{s}.jsonl"):
            by_page.setdefault(t["filename"], []).append(t)
    offset_pages = 0
    for filename, tables in by_page.items():
        img, mediabox = _render_gray(root / "pdf" / filename)
        offset_pages += mediabox[:2] != (0.0, 0.0)
        dark = img < DARK
        in_tables = np.zeros_like(dark)
        for t in tables:
            boxes = [_to_px(c["bbox"], mediabox) for c in t["html"]["cells"] if "bbox" in c]
            table_px = _to_px(t["bbox"], mediabox)
            outside, total = _ink_report(dark, table_px, boxes)
            assert total > 0 and outside <= 0.03 * total, f"{filename}: {outside}/{total} dark px outside the cells"
            x0, y0, x1, y1 = (int(v) for v in table_px)
            in_tables[max(0, y0 - TOL):y1 + TOL, max(0, x0 - TOL):x1 + TOL] = True
        # the page also has prose, a heading and a page number outside the tables
        assert (dark & ~in_tables).sum() > 500
    assert offset_pages >= 1


def test_a_wrong_mediabox_origin_fails_the_ink_check(fin):
    """The check above has teeth: ignoring a non-zero mediabox origin misplaces the boxes."""
    root, _ = fin
    for s in SPLITS:
        for t in _lines(root / f"FinTabNet_1.0.0_table_{s}.jsonl"):
            img, mediabox = _render_gray(root / "pdf" / t["filename"])
            if mediabox[:2] == (0.0, 0.0):
                continue
            width, height = mediabox[2] - mediabox[0], mediabox[3] - mediabox[1]
            wrong = (0.0, 0.0, width, height)
            boxes = [_to_px(c["bbox"], wrong) for c in t["html"]["cells"] if "bbox" in c]
            with pytest.raises(AssertionError):
                outside, total = _ink_report(img < DARK, _to_px(t["bbox"], wrong), boxes)
                assert outside <= 0.03 * total
            return
    pytest.fail("no page with a non-zero mediabox origin")


def test_fintabnet_sample_covers_the_variety(fin):
    root, _ = fin
    tables = [t for s in SPLITS for t in _lines(root / f"FinTabNet_1.0.0_table_{s}.jsonl")]
    tokens = [tok for t in tables for tok in t["html"]["structure"]["tokens"]]
    cell_tokens = [c["tokens"] for t in tables for c in t["html"]["cells"]]
    per_page = {}
    for t in tables:
        per_page[t["filename"]] = per_page.get(t["filename"], 0) + 1
    assert max(per_page.values()) == 2
    assert any(tok.startswith(" colspan") for tok in tokens) and any(tok.startswith(" rowspan") for tok in tokens)
    assert [] in cell_tokens and ["$"] in cell_tokens
    assert any("<b>" in toks for toks in cell_tokens) and any("<sup>" in toks for toks in cell_tokens)
    texts = ["".join(toks) for toks in cell_tokens]
    assert any(re.fullmatch(r"\(\d[\d,]*\)", x) for x in texts) and any(re.fullmatch(r"\d{1,3}(,\d{3})+", x) for x in texts)
    assert any(x.endswith("%") for x in texts)
    # multi-row header: a non-empty first-row cell spanning columns that row 2 splits into >= 2 non-empty cells
    def spanning_header(t):
        cells = _check_grid(t["html"]["structure"]["tokens"], len(t["html"]["cells"]))
        filled = [pos for pos, c in zip(cells, t["html"]["cells"]) if c["tokens"] and c["tokens"] != ["$"]]
        return any(sum(1 for r2, c2, _, _ in filled if r2 == 1 and c <= c2 < c + cs) >= 2
                   for r, c, _, cs in filled if r == 0 and cs > 1)

    assert any(spanning_header(t) for t in tables)
    boxes = np.array([c["bbox"] for t in tables for c in t["html"]["cells"] if "bbox" in c])
    heights = boxes[:, 3] - boxes[:, 1]
    assert heights.min() < 9 and heights.max() > 18  # small fonts, big fonts, two-line cells
    fonts, sizes = set(), set()
    for pdf in (root / "pdf").rglob("*.pdf"):
        data = pdf.read_bytes()
        fonts |= set(re.findall(rb"/BaseFont /([A-Za-z-]+)", data))
        doc = pdfium.PdfDocument(str(pdf))
        sizes.add(tuple(round(v) for v in doc[0].get_size()))
        doc.close()
    assert {b"Helvetica", b"Times-Roman", b"Courier"} <= fonts and any(f.endswith(b"Bold") for f in fonts)
    assert {(612, 792), (595, 842)} <= sizes


# ------------------------------------------------------------------ PubTabNet


def test_pubtabnet_layout_and_format(ptn):
    root, summary = ptn
    lines = _lines(root / "PubTabNet_2.0.0.jsonl")
    assert len(lines) == summary["tables"] == 24 and summary["dataset"] == "pubtabnet"
    assert summary["splits"] == {s: sum(1 for x in lines if x["split"] == s) for s in SPLITS}
    assert all(summary["splits"].values())
    assert len({x["imgid"] for x in lines}) == 24 and len({x["filename"] for x in lines}) == 24
    header_rows = set()
    for x in lines:
        assert list(x.keys()) == ["filename", "split", "imgid", "html"]
        assert isinstance(x["imgid"], int) and re.fullmatch(r"PMC\d+_\d{3}_\d{2}\.png", x["filename"])
        assert (root / x["split"] / x["filename"]).is_file()
        assert list(x["html"].keys()) == ["structure", "cells"]
        tokens = x["html"]["structure"]["tokens"]
        assert tokens[0] == "<thead>" and tokens[-1] == "</tbody>" and "<table>" not in tokens
        head = tokens[: tokens.index("</thead>")]
        header_rows.add(head.count("<tr>"))
        _check_grid(tokens, len(x["html"]["cells"]))
        for cell in x["html"]["cells"]:
            if not cell["tokens"]:
                assert list(cell.keys()) == ["tokens"]
            else:
                assert list(cell.keys()) == ["tokens", "bbox"] and all(isinstance(v, int) for v in cell["bbox"])
    assert header_rows == {1, 2}
    tokens = [tok for x in lines for tok in x["html"]["structure"]["tokens"]]
    assert any(t.startswith(" colspan") for t in tokens) and any(t.startswith(" rowspan") for t in tokens)


def test_pubtabnet_boxes_sit_on_the_ink(ptn):
    root, _ = ptn
    for x in _lines(root / "PubTabNet_2.0.0.jsonl"):
        img = cv2.imread(str(root / x["split"] / x["filename"]), cv2.IMREAD_GRAYSCALE)
        dark = img < DARK
        boxes = [c["bbox"] for c in x["html"]["cells"] if "bbox" in c]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
        outside, total = _ink_report(dark, (0, 0, img.shape[1], img.shape[0]), boxes)
        assert total > 0 and outside <= 0.03 * total, f"{x['filename']}: {outside}/{total} dark px outside the cells"
