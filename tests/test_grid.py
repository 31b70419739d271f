import json

import pytest

from ddcache.grid import StructureError, first_row_as_header, layout
from conftest import real_lines_path


def toks(rows):
    """Build structure tokens from rows of (rowspan, colspan) pairs, using FinTabNet's split <td form."""
    out = ["<table>"]
    for row in rows:
        out.append("<tr>")
        for rs, cs in row:
            if rs == cs == 1:
                out += ["<td>", "</td>"]
            else:
                out.append("<td")
                if rs > 1:
                    out.append(f' rowspan="{rs}"')
                if cs > 1:
                    out.append(f' colspan="{cs}"')
                out += [">", "</td>"]
        out.append("</tr>")
    return out + ["</table>"]


def test_plain_grid():
    g = layout(toks([[(1, 1)] * 3] * 2))
    assert (g.num_rows, g.num_cols) == (2, 3)
    assert [(c.row, c.col) for c in g.cells] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_colspan_and_rowspan_block_later_slots():
    # row 0: A(rowspan 2) B(colspan 2); row 1: C D (must land in columns 1 and 2)
    g = layout(toks([[(2, 1), (1, 2)], [(1, 1), (1, 1)]]))
    assert g.num_cols == 3 and g.num_rows == 2
    a, b, c, d = g.cells
    assert (a.row, a.col, a.row_span, a.col_span) == (0, 0, 2, 1)
    assert (b.row, b.col, b.col_span) == (0, 1, 2)
    assert (c.row, c.col) == (1, 1) and (d.row, d.col) == (1, 2)


def test_real_lines_layout_matches_cell_lists():
    for line in real_lines_path().read_text().splitlines():
        rec = json.loads(line)
        g = layout(rec["html"]["structure"]["tokens"])
        assert len(g.cells) == len(rec["html"]["cells"])
        # every row fits the table width, spans included
        for c in g.cells:
            assert c.col + c.col_span <= g.num_cols and c.row + c.row_span <= g.num_rows
    # MNST/2015/page_48 has two rowspan=2 cells in its first row
    rec = json.loads(real_lines_path().read_text().splitlines()[3])
    g = layout(rec["html"]["structure"]["tokens"])
    spans = [(c.row, c.col, c.row_span) for c in g.cells if c.row_span > 1]
    assert spans == [(0, 4, 2), (0, 5, 2)]
    assert g.num_cols == 6 and g.num_rows == 22


def test_thead_sets_header_and_first_row_opt_in():
    tokens = ["<thead>", "<tr>", "<td>", "</td>", "</tr>", "</thead>", "<tbody>", "<tr>", "<td>", "</td>", "</tr>", "</tbody>"]
    g = layout(tokens)
    assert [c.header for c in g.cells] == [True, False]
    g2 = first_row_as_header(layout(toks([[(1, 1)], [(1, 1)]])))
    assert [c.header for c in g2.cells] == [True, False]


@pytest.mark.parametrize(
    "rows",
    [
        [[(1, 1), (1, 1)], [(1, 1), (1, 1), (1, 1)]],  # second row wider
        [[(3, 1), (1, 1)], [(1, 1)]],  # rowspan past the last row
    ],
)
def test_malformed_structures_raise(rows):
    with pytest.raises(StructureError):
        layout(toks(rows))


def test_unterminated_tokens_raise():
    with pytest.raises(StructureError):
        layout(["<tr>", "<td>", "</td>"])
    with pytest.raises(StructureError):
        layout([])
