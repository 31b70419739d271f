"""Random table structure, cell text and geometric placement, shared by the synthetic datasets.

A :class:`Table` is a grid of :class:`Cell` s (spans included, every grid
slot covered exactly once) with the text of each cell. :func:`place` turns it
into geometry in a *table-local* frame: origin at the table's top-left
corner, x to the right, y DOWN, in whatever unit the caller's ``measure``
function uses (PDF points for FinTabNet, pixels for PubTabNet). Each renderer
maps that frame into its own page space.

Everything here is pure: randomness comes in through a ``random.Random``.
"""
from dataclasses import dataclass, field


@dataclass
class Cell:
    """One ``<td>``: top-left grid slot, spans, text lines (empty tuple = empty cell)."""

    row: int
    col: int
    row_span: int = 1
    col_span: int = 1
    lines: tuple = ()
    bold: bool = False
    align: str = "left"  # left | right | center
    valign: str = "bottom"  # top | middle | bottom (within the cell's row span)
    sup: str = ""  # footnote marker set as a superscript after the last line, e.g. "(1)"
    indent: int = 0  # indentation level of a left-aligned label (sub-items of a section)


@dataclass
class Table:
    """A table on a grid; ``cells`` are in document (html) order: by top row, then column."""

    num_rows: int
    num_cols: int
    header_rows: int
    cells: list = field(default_factory=list)


@dataclass
class PlacedCell:
    """Where a cell's text goes. Coordinates: table-local, y down.

    ``lines``: (x, baseline_y, text) per text line; ``sup``: (x,
    baseline_y, text) of the superscript run (drawn at ``sup_scale`` times
    the size), or None; ``box``: (x0, top, x1, bottom) tight around the text
    (text origin .. end of advance width, baseline-ascent ..
    baseline-descent, superscript included), None for an empty cell;
    ``area``: (x0, top, x1, bottom) of the cell's grid area (for rules).
    """

    lines: list
    box: tuple
    area: tuple
    sup: tuple = None


@dataclass
class Placement:
    width: float
    height: float
    col_edges: list  # num_cols + 1 x positions
    row_edges: list  # num_rows + 1 y positions (down)
    cells: list  # PlacedCell per Table.cells entry


# ---------------------------------------------------------------- html tokens


def cell_tokens(cell):
    """Character tokens of a cell's text (lines joined by a space), ``<b>``/``</b>`` around bold text.

    A footnote marker follows as ``<sup>``, its characters, ``</sup>`` (as in
    the real releases: ``"rentals<sup>(1)</sup>"``).
    """
    chars = list(" ".join(cell.lines))
    if cell.sup:
        chars += ["<sup>", *cell.sup, "</sup>"]
    if cell.bold and chars:
        return ["<b>", *chars, "</b>"]
    return chars


def _td_tokens(cell):
    # spanning cells are split over three tokens exactly like the real releases
    if cell.row_span == 1 and cell.col_span == 1:
        return ["<td>", "</td>"]
    tokens = ["<td"]
    if cell.row_span > 1:
        tokens.append(f' rowspan="{cell.row_span}"')
    if cell.col_span > 1:
        tokens.append(f' colspan="{cell.col_span}"')
    return tokens + [">", "</td>"]


def structure_tokens(table, sections):
    """PubTabNet-style structure tokens of ``table``.

    ``sections=False``: FinTabNet style, ``<table>`` … ``</table>`` with bare
    ``<tr>`` rows. ``sections=True``: PubTabNet style, the first
    ``table.header_rows`` rows inside ``<thead>``, the rest inside
    ``<tbody>``, no ``<table>`` wrapper.
    """
    by_row = [[] for _ in range(table.num_rows)]
    for cell in table.cells:
        by_row[cell.row].append(cell)
    tokens = [] if sections else ["<table>"]
    for r, cells in enumerate(by_row):
        if sections and r == 0 and table.header_rows:
            tokens.append("<thead>")
        if sections and r == table.header_rows:
            tokens.append("<tbody>")
        tokens.append("<tr>")
        for cell in sorted(cells, key=lambda c: c.col):
            tokens += _td_tokens(cell)
        tokens.append("</tr>")
        if sections and table.header_rows and r == table.header_rows - 1:
            tokens.append("</thead>")
    if sections:
        tokens.append("</tbody>")
    else:
        tokens.append("</table>")
    return tokens


# ---------------------------------------------------------------- grid builder


class _GridBuilder:
    """Collects cells and checks that every slot of the grid is covered exactly once."""

    def __init__(self, num_cols):
        self.num_cols = num_cols
        self.cells = []
        self.taken = {}
        self.num_rows = 0

    def add(self, row, col, lines=(), row_span=1, col_span=1, **style):
        for r in range(row, row + row_span):
            for c in range(col, col + col_span):
                if (r, c) in self.taken or c >= self.num_cols:
                    raise AssertionError(f"slot {(r, c)} covered twice or outside the grid")
                self.taken[(r, c)] = True
        self.cells.append(Cell(row, col, row_span, col_span, tuple(lines), **style))
        self.num_rows = max(self.num_rows, row + row_span)

    def table(self, header_rows):
        if len(self.taken) != self.num_rows * self.num_cols:
            raise AssertionError("grid has holes")
        cells = sorted(self.cells, key=lambda c: (c.row, c.col))
        return Table(self.num_rows, self.num_cols, header_rows, cells)


# ---------------------------------------------------------------- text vocabulary

_FIN_LABELS = (
    "Net revenues", "Cost of sales", "Gross profit", "Operating income", "Interest expense",
    "Income taxes", "Net income", "Depreciation and amortization", "Accounts receivable",
    "Inventories", "Goodwill", "Other assets", "Accrued liabilities", "Long-term debt",
    "Deferred income taxes", "Selling, general and administrative", "Research and development",
    "Cash and cash equivalents", "Minimum rentals", "Contingent rentals", "Capital expenditures",
    "Stock-based compensation", "Restructuring charges", "Foreign currency translation",
    "Operating leases", "Purchase obligations", "Pension benefits", "Dividends paid",
    "Weighted-average shares outstanding", "Diluted earnings per share", "Revenue from services",
    "Accrued salaries and employee benefits", "Property and equipment, net", "Other, net",
    "Unrecognized tax benefits", "Effective tax rate", "Share repurchases", "Segment operating margin",
)
_FIN_SECTIONS = ("Assets:", "Liabilities:", "Operating activities:", "Revenues:", "Expenses:",
                 "Current assets:", "Investing activities:", "Other information:")
_FIN_UNITS = ("(In millions)", "(In thousands)", "(Dollars in millions)", "(In thousands, except per share amounts)")
_FIN_GROUPS = ("Year Ended December 31,", "Fiscal Year Ended", "As of December 31,", "Years Ended June 30,")
_FIN_SUBHEADS = (("Amount", "%"), ("Shares", "Price"), ("High", "Low"), ("Actual", "Change"))
_FIN_CHANGE = (("Percent", "Change"), ("% Change",), ("Increase", "(Decrease)"))

_SCI_LABELS = (
    "Age (years)", "Sex", "Male", "Female", "BMI (kg/m2)", "Smoking", "Diabetes", "Hypertension",
    "Systolic BP", "HbA1c (%)", "Total cholesterol", "Follow-up (months)", "Tumor size (cm)",
    "Lymph node metastasis", "Stage III-IV", "Treatment response", "Serum creatinine", "LDL",
    "Heart rate (bpm)", "Gene expression", "Mutation rate", "Sample size", "Accuracy", "Recall",
)
_SCI_SECTIONS = ("Baseline characteristics", "Clinical outcomes", "Laboratory values", "Model performance")
_SCI_FIRST = ("Variable", "Characteristic", "Parameter", "Gene", "Outcome")
_SCI_GROUPS = ("Cases", "Controls", "Model 1", "Model 2", "Cohort A", "Cohort B", "Univariate", "Multivariate")
_SCI_SUBHEADS = (("n", "%"), ("OR", "95% CI"), ("Mean", "SD"), ("HR", "p"))
_SCI_SINGLE = ("p-value", "Total", "Overall", "Control", "Treated", "Ref.", "Score", "N")


def _split_two_lines(text):
    """Break a label near its middle at a space (for two-line cells)."""
    words = text.split(" ")
    if len(words) < 2:
        return (text,)
    best = min(range(1, len(words)), key=lambda k: abs(len(" ".join(words[:k])) - len(text) / 2))
    return (" ".join(words[:best]), " ".join(words[best:]))


def _fin_label(rng, total=False):
    """(lines, footnote marker) of a row label."""
    text = rng.choice(_FIN_LABELS)
    if total:
        text = "Total " + text[0].lower() + text[1:]
    sup = ""
    if rng.random() < 0.1:
        sup = f"({rng.randint(1, 4)})"
    elif rng.random() < 0.05:
        text += f" ({rng.randint(1, 4)})"  # markers printed inline exist too
    if len(text) > 22 and rng.random() < 0.3:
        return _split_two_lines(text), sup
    return (text,), sup


def _fin_number(rng, kind):
    """A number as printed in annual reports: thousands separators, negatives in parentheses."""
    if kind == "percent":
        return f"{rng.uniform(-40, 95):.1f}%"
    if kind == "price":
        return f"{rng.uniform(1, 250):.2f}"
    value = int(rng.lognormvariate(5.5, 1.8))
    text = f"{value:,}"
    return f"({text})" if rng.random() < 0.15 else text


def _sci_value(rng):
    r = rng.random()
    if r < 0.25:
        return f"{rng.uniform(0, 100):.1f}"
    if r < 0.45:
        return f"{rng.randint(1, 900)} ({rng.uniform(0, 100):.1f})"
    if r < 0.6:
        return f"{rng.uniform(0, 80):.2f} +/- {rng.uniform(0, 20):.2f}"
    if r < 0.72:
        return rng.choice(("<0.001", "0.01", "0.05", "NS", "0.23"))
    if r < 0.85:
        lo = rng.uniform(0.2, 2)
        return f"{lo:.2f}-{lo + rng.uniform(0.1, 3):.2f}"
    return str(rng.randint(0, 5000))


# ---------------------------------------------------------------- table generators


def random_financial_table(rng, max_body_rows=12, max_value_cols=5):
    """A FinTabNet-like table: row labels, number columns, optional lone "$" columns, 0-2 header rows.

    Header variants: none; one row of years; a spanning group header ("Year
    Ended December 31,") over the years, optionally with a rowspan-2 units
    cell and a rowspan-2 "% Change" column; a year header spanning
    sub-columns ("Amount", "%"). Body rows: data rows, section rows (label
    then empty cells, or one cell spanning the table), total rows.
    """
    header = rng.choices(("none", "single", "group", "pairs"), (0.1, 0.4, 0.3, 0.2))[0]
    dollar = rng.choices(("none", "inline", "lone"), (0.35, 0.25, 0.4))[0]
    header_bold = rng.random() < 0.5
    total_bold = rng.random() < 0.6
    year = rng.randint(2006, 2019)

    # value columns: (kind, header text, has a lone "$" column, group index)
    values = []
    if header == "pairs":
        sub = rng.choice(_FIN_SUBHEADS)
        for g in range(rng.randint(1, max(1, max_value_cols // 2))):
            for name in sub:
                kind = "percent" if name in ("%", "Change") else ("price" if name in ("Price", "High", "Low") else "money")
                values.append((kind, name, dollar == "lone" and kind != "percent", g))
    else:
        for k in range(rng.randint(1, max_value_cols)):
            values.append(("money", str(year - k), dollar == "lone", 0))
    change_col = header == "group" and rng.random() < 0.4
    if change_col:
        values.append(("percent", None, False, -1))

    # grid columns: 0 = labels; per value column an optional "$" column then the number column
    col_of = []
    num_cols = 1
    for kind, _, lone, _ in values:
        col_of.append(num_cols + (1 if lone else 0))
        num_cols += 2 if lone else 1
    g = _GridBuilder(num_cols)
    hstyle = {"bold": header_bold, "align": "center"}

    def value_start(i):
        return col_of[i] - (1 if values[i][2] else 0)

    def value_span(i):
        return 2 if values[i][2] else 1

    if header == "single":
        first = (rng.choice(_FIN_UNITS),) if rng.random() < 0.4 else ()
        g.add(0, 0, first, bold=header_bold and bool(first))
        for i, (_, name, _, _) in enumerate(values):
            g.add(0, value_start(i), (name,), col_span=value_span(i), **hstyle)
        header_rows = 1
    elif header in ("group", "pairs"):
        if rng.random() < 0.5:
            g.add(0, 0, (rng.choice(_FIN_UNITS),), row_span=2, bold=header_bold)
        else:
            g.add(0, 0)
            g.add(1, 0)
        if header == "group":
            body_cols = [i for i, v in enumerate(values) if v[1] is not None]
            start = value_start(body_cols[0])
            span = sum(value_span(i) for i in body_cols)
            g.add(0, start, (rng.choice(_FIN_GROUPS),), col_span=span, **hstyle)
            for i in body_cols:
                g.add(1, value_start(i), (values[i][1],), col_span=value_span(i), **hstyle)
            if change_col:
                i = len(values) - 1
                g.add(0, value_start(i), rng.choice(_FIN_CHANGE), row_span=2, **hstyle)
        else:
            groups = sorted({v[3] for v in values})
            for grp in groups:
                members = [i for i, v in enumerate(values) if v[3] == grp]
                span = sum(value_span(i) for i in members)
                g.add(0, value_start(members[0]), (str(year - grp),), col_span=span, **hstyle)
                for i in members:
                    g.add(1, value_start(i), (values[i][1],), col_span=value_span(i), **hstyle)
        header_rows = 2
    else:
        header_rows = 0

    row = header_rows
    n_body = rng.randint(min(3, max_body_rows), max(3, max_body_rows))
    dollar_next = True  # the first row of a block shows "$", as in printed statements
    indent = 0  # rows under a section label are indented one level
    while row - header_rows < n_body:
        r = rng.random()
        is_last = row - header_rows == n_body - 1
        if r < 0.12 and not is_last:
            label = (rng.choice(_FIN_SECTIONS),)
            bold = rng.random() < 0.5
            if rng.random() < 0.3:
                g.add(row, 0, label, col_span=num_cols, bold=bold)
            else:
                g.add(row, 0, label, bold=bold)
                for c in range(1, num_cols):
                    g.add(row, c)
            dollar_next = True
            indent = 1 if rng.random() < 0.6 else 0
            row += 1
            continue
        total = is_last and n_body > 3 and rng.random() < 0.7
        bold = total and total_bold
        lines, sup = _fin_label(rng, total)
        g.add(row, 0, lines, bold=bold, sup=sup, indent=0 if total else indent)
        for i, (kind, _, lone, _) in enumerate(values):
            show_dollar = (dollar_next or total) and kind != "percent"
            if lone:
                g.add(row, col_of[i] - 1, ("$",) if show_dollar else (), bold=bold)
            if rng.random() < 0.05:
                g.add(row, col_of[i])  # missing value
                continue
            text = _fin_number(rng, kind)
            if dollar == "inline" and show_dollar:
                text = "$" + text
            g.add(row, col_of[i], (text,), bold=bold, align="right")
        dollar_next = False
        row += 1
    return g.table(header_rows)


def random_scientific_table(rng, max_body_rows=12, max_cols=7):
    """A PubTabNet-like table: a label column, 1-2 header rows (groups spanning sub-columns), mixed values."""
    two_rows = rng.random() < 0.45
    header_bold = rng.random() < 0.5
    g_cols = []  # per column group: list of sub-header texts (None = single column)
    n_value = 0
    target = rng.randint(1, max(1, max_cols - 1))
    while n_value < target:
        if two_rows and rng.random() < 0.6 and n_value + 2 <= target:
            sub = rng.choice(_SCI_SUBHEADS)
            g_cols.append((rng.choice(_SCI_GROUPS), sub))
            n_value += 2
        else:
            g_cols.append((rng.choice(_SCI_SINGLE), None))
            n_value += 1
    if two_rows and not any(sub for _, sub in g_cols):
        two_rows = False
    num_cols = 1 + n_value
    g = _GridBuilder(num_cols)
    hstyle = {"bold": header_bold, "align": "center", "valign": "middle"}
    first = (rng.choice(_SCI_FIRST),)
    if two_rows:
        g.add(0, 0, first, row_span=2, bold=header_bold, valign="middle")
        c = 1
        for name, sub in g_cols:
            if sub:
                g.add(0, c, (name,), col_span=2, **hstyle)
                g.add(1, c, (sub[0],), **hstyle)
                g.add(1, c + 1, (sub[1],), **hstyle)
                c += 2
            else:
                g.add(0, c, (name,), row_span=2, **hstyle)
                c += 1
        header_rows = 2
    else:
        g.add(0, 0, first, bold=header_bold)
        c = 1
        for name, sub in g_cols:
            for k in range(2 if sub else 1):
                g.add(0, c, (name if not sub else f"{name} {sub[k]}",), **hstyle)
                c += 1
        header_rows = 1

    n_body = rng.randint(min(2, max_body_rows), max(2, max_body_rows))
    for row in range(header_rows, header_rows + n_body):
        if rng.random() < 0.12 and row < header_rows + n_body - 1:
            label = (rng.choice(_SCI_SECTIONS),)
            if rng.random() < 0.5:
                g.add(row, 0, label, col_span=num_cols, bold=rng.random() < 0.5)
            else:
                g.add(row, 0, label, bold=rng.random() < 0.5)
                for c in range(1, num_cols):
                    g.add(row, c)
            continue
        label = rng.choice(_SCI_LABELS)
        sup = rng.choice(("a", "b", "c", "1", "2")) if rng.random() < 0.08 else ""
        g.add(row, 0, _split_two_lines(label) if len(label) > 14 and rng.random() < 0.2 else (label,),
              valign="middle", sup=sup)
        for c in range(1, num_cols):
            if rng.random() < 0.07:
                g.add(row, c)
            else:
                g.add(row, c, (_sci_value(rng),), align="center", valign="middle")
    return g.table(header_rows)


# ---------------------------------------------------------------- placement


def place(table, measure, ascent, descent, pad_x, pad_y, line_gap=0.15, sup_scale=0.65, sup_rise=0.4):
    """Lay ``table`` out: column widths from the widest text, row heights from the tallest cell.

    ``measure(text, bold) -> width`` and ``ascent`` (> 0) / ``descent`` (<= 0,
    below the baseline) are in the renderer's unit; ``pad_x``/``pad_y`` is the
    white space between a cell's text and its grid area, per side;
    ``line_gap`` is the extra leading between the lines of a two-line cell as
    a fraction of the text height. A superscript is set at ``sup_scale``
    times the size with its baseline raised by ``sup_rise`` * ascent; its
    width is taken as ``sup_scale`` * the full-size width (exact for PDF
    fonts, whose widths scale linearly). Returns a :class:`Placement` in the
    table-local frame (origin top-left, y down).
    """
    text_h = ascent - descent
    line_h = text_h * (1.0 + line_gap)

    def sup_width(cell):
        return sup_scale * measure(cell.sup, cell.bold) if cell.sup else 0.0

    def line_widths(cell):
        ws = [measure(t, cell.bold) for t in cell.lines]
        ws[-1] += sup_width(cell)
        if cell.align == "left":
            ws = [w + cell.indent * text_h for w in ws]
        return ws

    widths = [max(line_widths(c)) if c.lines else 0.0 for c in table.cells]
    heights = [text_h + line_h * (len(c.lines) - 1) if c.lines else 0.0 for c in table.cells]

    col_w = [0.0] * table.num_cols
    row_h = [text_h] * table.num_rows  # an all-empty row keeps one line of height
    for cell, w, h in zip(table.cells, widths, heights):
        if cell.col_span == 1:
            col_w[cell.col] = max(col_w[cell.col], w)
        if cell.row_span == 1:
            row_h[cell.row] = max(row_h[cell.row], h)
    # spanning cells: widen/heighten the last spanned column/row if the text does not fit
    for cell, w, h in zip(table.cells, widths, heights):
        if cell.col_span > 1:
            cols = range(cell.col, cell.col + cell.col_span)
            have = sum(col_w[c] for c in cols) + 2 * pad_x * (cell.col_span - 1)
            if w > have:
                col_w[cols[-1]] += w - have
        if cell.row_span > 1:
            rows = range(cell.row, cell.row + cell.row_span)
            have = sum(row_h[r] for r in rows) + 2 * pad_y * (cell.row_span - 1)
            if h > have:
                row_h[rows[-1]] += h - have

    col_edges = [0.0]
    for w in col_w:
        col_edges.append(col_edges[-1] + w + 2 * pad_x)
    row_edges = [0.0]
    for h in row_h:
        row_edges.append(row_edges[-1] + h + 2 * pad_y)

    placed = []
    for cell, h in zip(table.cells, heights):
        ax0, ax1 = col_edges[cell.col], col_edges[cell.col + cell.col_span]
        ay0, ay1 = row_edges[cell.row], row_edges[cell.row + cell.row_span]
        area = (ax0, ay0, ax1, ay1)
        if not cell.lines:
            placed.append(PlacedCell([], None, area))
            continue
        inner_top, inner_bottom = ay0 + pad_y, ay1 - pad_y
        if cell.valign == "top":
            top = inner_top
        elif cell.valign == "middle":
            top = inner_top + (inner_bottom - inner_top - h) / 2
        else:
            top = inner_bottom - h
        lines = []
        last = len(cell.lines) - 1
        for k, text in enumerate(cell.lines):
            w = measure(text, cell.bold)
            run = w + (sup_width(cell) if k == last else 0.0)  # the superscript moves with its line
            if cell.align == "right":
                x = ax1 - pad_x - run
            elif cell.align == "center":
                x = (ax0 + ax1 - run) / 2
            else:
                x = ax0 + pad_x + cell.indent * text_h
            lines.append((x, top + ascent + k * line_h, text, w))
        sup = None
        box_top = top
        if cell.sup:
            x, baseline, _, w = lines[-1]
            sup = (x + w, baseline - sup_rise * ascent, cell.sup)
            box_top = min(top, sup[1] - sup_scale * ascent)
        x0 = min(x for x, _, _, _ in lines)
        x1 = max(x + w for x, _, _, w in lines)
        if sup is not None:
            x1 = max(x1, sup[0] + sup_width(cell))
        box = (x0, box_top, x1, lines[-1][1] - descent)
        placed.append(PlacedCell([(x, b, t) for x, b, t, _ in lines], box, area, sup))
    return Placement(col_edges[-1], row_edges[-1], col_edges, row_edges, placed)
