"""Lay out PubTabNet-style HTML structure tokens on a grid.

Neither FinTabNet nor PubTabNet stores row/column indices: they follow from
the token sequence. A cell occupies the first free slot of its row; a
rowspan blocks the slots below it for later rows; the number of columns is
the sum of the first row's colspans.

Annotation lines may be hostile: a ``colspan="1000000"`` must not make the
layout allocate a million slots, so the grid's size (rows x columns) is
checked against ``max_slots`` before any slot is filled, spans longer than
9 digits are refused, and occupancy is one byte per slot.
"""
import re
from dataclasses import dataclass, field

from .input_limits import MAX_GRID

_SPAN_RE = re.compile(r'\s*(rowspan|colspan)\s*=\s*"?([^"\s>]*)"?')  # any value: checked below, never misread
MAX_SPAN_DIGITS = 9


class StructureError(ValueError):
    """The token sequence is not a well-formed table."""


class GridTooLargeError(StructureError):
    """The table's grid has more slots (rows x columns) than the limit."""


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
                # split form: "<td", ' colspan="2"', ..., ">" (attributes may also be inline);
                # the tag ends at the first token whose last non-blank character is ">"
                parts, tail = [tok[3:]], tok[3:].rstrip()
                while not tail.endswith(">"):
                    i += 1
                    if i >= n:
                        raise StructureError("unterminated <td")
                    parts.append(tokens[i])
                    tail = tokens[i].rstrip() or tail
                for name, value in _SPAN_RE.findall("".join(parts)):
                    if len(value) > MAX_SPAN_DIGITS:
                        raise StructureError(f"{name} {value[:12]}... is too long")
                    if not (value.isascii() and value.isdigit()):  # "-3", "1.5", "٣": not read as some other span
                        raise StructureError(f"{name}={value!r} is not a positive integer")
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


def layout(tokens, max_slots=MAX_GRID):
    """Structure tokens (a list of str) -> :class:`Grid`.

    Raises :class:`StructureError` when a token is not a string, rows do not
    add up to the same width or a span reaches past the table, and
    :class:`GridTooLargeError` when rows x columns exceeds ``max_slots``,
    before any slot is allocated.
    """
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise StructureError("structure tokens are not a list of strings")
    rows = _parse_cells(tokens)
    if not rows:
        raise StructureError("no rows")
    num_rows = len(rows)
    num_cols = sum(cs for _, cs, _ in rows[0])
    if num_rows * num_cols > max_slots:
        raise GridTooLargeError(f"grid of {num_rows} x {num_cols} slots is over the limit of {max_slots}")
    occupied = bytearray(num_rows * num_cols)  # row-major, 1 = taken
    cells, index = [], 0
    for r, row in enumerate(rows):
        c = 0
        for rs, cs, header in row:
            while c < num_cols and occupied[r * num_cols + c]:
                c += 1
            if c + cs > num_cols:
                raise StructureError(f"row {r} is wider than the first row ({num_cols} columns)")
            if r + rs > num_rows:
                raise StructureError(f"rowspan at row {r} reaches past the last row")
            for dr in range(rs):
                start = (r + dr) * num_cols + c
                if any(occupied[start:start + cs]):
                    raise StructureError(f"cells overlap at row {r + dr}, column {c + occupied[start:start + cs].index(1)}")
                occupied[start:start + cs] = b"\x01" * cs
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
