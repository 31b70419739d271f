"""Lay out PubTabNet-style HTML structure tokens on a grid.

Neither FinTabNet nor PubTabNet stores row/column indices: they follow from
the token sequence. A cell occupies the first free slot of its row; a
rowspan blocks the slots below it for later rows; the number of columns is
the sum of the first row's colspans.
"""
import re
from dataclasses import dataclass, field

_SPAN_RE = re.compile(r'\s*(rowspan|colspan)\s*=\s*"?(\d+)"?')


class StructureError(ValueError):
    """The token sequence is not a well-formed table."""


@dataclass
class GridCell:
    """One ``<td>`` laid out on the grid (0-based indices)."""

    index: int  # position among the html cells (document order)
    row: int
    col: int
    row_span: int = 1
    col_span: int = 1
    header: bool = False


@dataclass
class Grid:
    cells: list = field(default_factory=list)
    num_rows: int = 0
    num_cols: int = 0


def _parse_cells(tokens):
    """Token list -> list of rows, each a list of (row_span, col_span, header)."""
    rows, current, section = [], None, None
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        if tok in ("<thead>", "<tbody>"):
            section = tok[1:-1]
        elif tok in ("</thead>", "</tbody>"):
            section = None
        elif tok == "<tr>":
            if current is not None:
                raise StructureError("nested <tr>")
            current = []
        elif tok == "</tr>":
            if current is None:
                raise StructureError("</tr> without <tr>")
            rows.append(current)
            current = None
        elif tok == "<td>" or tok.startswith("<td"):
            if current is None:
                raise StructureError("<td> outside a row")
            rs = cs = 1
            if tok != "<td>":
                # split form: "<td", ' colspan="2"', ..., ">" (attributes may also be inline)
                attrs = tok[3:]
                while not attrs.rstrip().endswith(">"):
                    i += 1
                    if i >= n:
                        raise StructureError("unterminated <td")
                    attrs += tokens[i]
                for name, value in _SPAN_RE.findall(attrs):
                    if name == "rowspan":
                        rs = int(value)
                    else:
                        cs = int(value)
                if rs < 1 or cs < 1:
                    raise StructureError("span < 1")
            current.append((rs, cs, section == "thead"))
        i += 1
    if current is not None:
        raise StructureError("unterminated <tr>")
    return rows


def layout(tokens):
    """Structure tokens -> :class:`Grid`.

    Raises :class:`StructureError` when rows do not add up to the same width
    or a span reaches past the table.
    """
    rows = _parse_cells(tokens)
    if not rows:
        raise StructureError("no rows")
    num_rows = len(rows)
    occupied = set()
    cells, index = [], 0
    num_cols = sum(cs for _, cs, _ in rows[0])
    for r, row in enumerate(rows):
        c = 0
        for rs, cs, header in row:
            while (r, c) in occupied:
                c += 1
            if c + cs > num_cols:
                raise StructureError(f"row {r} is wider than the first row ({num_cols} columns)")
            if r + rs > num_rows:
                raise StructureError(f"rowspan at row {r} reaches past the last row")
            for dr in range(rs):
                for dc in range(cs):
                    if (r + dr, c + dc) in occupied:
                        raise StructureError(f"cells overlap at row {r + dr}, column {c + dc}")
                    occupied.add((r + dr, c + dc))
            cells.append(GridCell(index, r, c, rs, cs, header))
            index += 1
            c += cs
    return Grid(cells=cells, num_rows=num_rows, num_cols=num_cols)


def first_row_as_header(grid):
    """Mark cells starting in row 0 as header (FinTabNet has no <thead>; opt-in, noisy)."""
    for cell in grid.cells:
        if cell.row == 0:
            cell.header = True
    return grid
