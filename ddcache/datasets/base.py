"""The reader interface: what one dataset module implements to be buildable.

A reader turns one raw annotation line into a :class:`TableAnnotation` (in
the dataset's own coordinates) and opens the page it lives on. Everything
after that (rendering, cropping, encoding, storing) is dataset-independent.

The build calls, in this order: ``check_source(source, split, options)``
once; ``count_lines(source, split, options)`` once (the progress bar's total,
may be None); ``annotation_lines(source, split, options)`` once; then, in
worker processes, ``parse(line, options)`` and ``open_page(source,
annotation)`` per line. ``options`` is a :class:`ReadOptions`.

Annotation lines are untrusted input: every field a reader takes is checked
here (:func:`parse_box`, :func:`text_field`, :func:`id_field`,
:func:`cells_from_html`), so a malformed line becomes a counted skip with a
reason and its line number, never an exception that stops a build.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SkipSample, UserError
from ..grid import GridTooLargeError, StructureError, first_row_as_header, layout
from ..input_limits import MAX_COORDINATE, MAX_GRID, MAX_LINE_BYTES
from ..regular_file import open_regular
from ..schema import INT64_MAX, MAX_TEXT


@dataclass(frozen=True)
class ReadOptions:
    """How to read annotation lines (``ddcache build`` options; part of what decides a cache's records).

    ``first_row_header``: mark grid row 0 as header (for datasets without
    ``<thead>``); ``annotations``: which FinTabNet files, ``"table"``
    (``table_*.jsonl``, with the table box) or ``"cell"`` (``cell_*.jsonl``:
    the table box is the union of the cell boxes); ``max_line_bytes`` /
    ``max_grid``: the input limits of ``input_limits.py``.
    """

    first_row_header: bool = False
    annotations: str = "table"
    max_line_bytes: int = MAX_LINE_BYTES  # longer lines are skipped as too_large (input_limits.py)
    max_grid: int = MAX_GRID  # tables with more grid slots are skipped as too_large


@dataclass
class Cell:
    """One html cell: its box in source units (None when the cell is empty) and grid position."""

    bbox: tuple
    row: int
    col: int
    row_span: int
    col_span: int
    header: bool
    text: str = ""


@dataclass
class TableAnnotation:
    """One table as the dataset describes it, in source units (see geometry.py)."""

    source_file: str  # relative to the dataset's image root
    line_no: int  # 1-based line in ``annotation_file``
    annotation_file: str
    split: str
    table_id: object
    table_bbox: tuple  # source units; the union of the cell boxes when the dataset has none
    cells: list = field(default_factory=list)
    num_rows: int = 0
    num_cols: int = 0

    @property
    def boxed_cells(self):
        return [c for c in self.cells if c.bbox is not None]


@dataclass
class AnnotationLine:
    """One raw line, parsed or not: the unit of reading, skipping and counting."""

    annotation_file: str
    line_no: int
    record: object  # the decoded JSON object, or None when ``error`` is set
    error: str = ""
    reason: str = "malformed_json"  # the skip reason when ``record`` is None
    path: str = ""  # the file it was read from and where it starts in it (see LineRef)
    offset: int = -1

    @property
    def page_key(self):
        name = self.record.get("filename") if isinstance(self.record, dict) else None
        return name if isinstance(name, str) else None

    def ref(self):
        """Where this line is, to be read again with :func:`read_line` (a few bytes instead of the parsed line)."""
        return LineRef(self.annotation_file, self.line_no, self.path, self.offset)


@dataclass(frozen=True)
class LineRef:
    """The position of an annotation line: page mode groups these, not parsed lines, and workers re-read them."""

    annotation_file: str
    line_no: int
    path: str
    offset: int


def read_jsonl(path, display_name, max_line_bytes=MAX_LINE_BYTES):
    """Yield :class:`AnnotationLine` for each line of ``path`` (blank lines are not annotations).

    A line longer than ``max_line_bytes`` is not parsed (reason
    ``too_large``; its bytes are skipped in 1 MB reads, never held), and JSON
    nested too deeply for the parser is ``malformed_json``, like any other
    line that is not one JSON object.
    """
    with open_regular(path) as f:
        line_no, offset = 0, 0
        while True:
            line_no += 1
            line, offset = _read_one(f, display_name, line_no, str(path), offset, max_line_bytes)
            if line is None:
                return
            if line is not _BLANK:
                yield line


def count_jsonl_lines(path):
    """Non-blank lines of ``path`` (the progress bar's total), read in 1 MB pieces: a line of any length costs no
    more memory than one piece (iterating the file object would hold a whole line); None if unreadable."""
    count, blank = 0, True
    try:
        with open_regular(path) as f:
            while True:
                piece = f.readline(1 << 20)
                if not piece:
                    return count + (not blank)
                blank = blank and piece.isspace()  # (no copy of the piece, unlike strip())
                if piece.endswith(b"\n"):
                    count += not blank
                    blank = True
    except OSError:
        return None


def read_line(ref, max_line_bytes=MAX_LINE_BYTES):
    """The :class:`AnnotationLine` at ``ref`` (a :class:`LineRef` from :meth:`AnnotationLine.ref`), read again."""
    with open_regular(ref.path) as f:
        f.seek(ref.offset)
        line, _ = _read_one(f, ref.annotation_file, ref.line_no, ref.path, ref.offset, max_line_bytes)
    if line is None or line is _BLANK:
        return AnnotationLine(ref.annotation_file, ref.line_no, None, "the line changed since it was read", path=ref.path,
                              offset=ref.offset)
    return line


_BLANK = object()


def _read_one(f, display_name, line_no, path, offset, max_line_bytes):
    """Read and parse the line at the file position ``offset``: (AnnotationLine, None at EOF or _BLANK; next offset)."""
    raw = f.readline(max_line_bytes + 1)
    if not raw:
        return None, offset
    where = {"path": path, "offset": offset}
    if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
        size = len(raw) + _skip_rest_of_line(f)
        return AnnotationLine(display_name, line_no, None, f"{size} bytes, over --max-line-bytes {max_line_bytes}",
                              reason="too_large", **where), offset + size
    if not raw.strip():
        return _BLANK, offset + len(raw)
    try:
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as exc:
        return AnnotationLine(display_name, line_no, None, f"{type(exc).__name__}: {exc}"[:200], **where), offset + len(raw)
    return AnnotationLine(display_name, line_no, record, **where), offset + len(raw)


def _skip_rest_of_line(f):
    """Read past the end of the current line; return the bytes skipped."""
    skipped = 0
    while True:
        chunk = f.readline(1 << 20)
        skipped += len(chunk)
        if not chunk or chunk.endswith(b"\n"):
            return skipped


def parse_box(value, what, strict=False):
    """A source box ``[x0, y0, x1, y1]`` -> tuple of 4 floats; SkipSample('bad_box') otherwise.

    Each coordinate must be a finite number (not a bool, a string or a huge
    integer) of magnitude at most ``MAX_COORDINATE``, and the box not
    inverted (``strict``: not empty either).
    """
    if not (isinstance(value, (list, tuple)) and len(value) == 4):
        raise SkipSample("bad_box", f"{what}: {_short(value)} is not 4 numbers")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SkipSample("bad_box", f"{what}: {_short(value)} is not 4 numbers")
        try:
            f = float(v)
        except OverflowError:
            f = math.inf
        if not (math.isfinite(f) and abs(f) <= MAX_COORDINATE):
            raise SkipSample("bad_box", f"{what}: coordinate {_short(v)} is not a finite number within +-{MAX_COORDINATE:g}")
        out.append(f)
    x0, y0, x1, y1 = out
    if x1 < x0 or y1 < y0 or (strict and (x1 == x0 or y1 == y0)):
        raise SkipSample("bad_box", f"{what}: inverted {_short(value)}")
    return tuple(out)


def text_field(record, name, required=True, max_len=MAX_TEXT):
    """``record[name]`` if it is a non-empty string (SkipSample 'missing_field' / 'bad_field' otherwise); None if optional and absent."""
    if name not in record or record[name] is None:
        if required:
            raise SkipSample("missing_field", name)
        return None
    value = record[name]
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise SkipSample("bad_field", f"{name} is {_short(value)}, expected a non-empty string of at most {max_len} characters")
    return value


def id_field(record, name):
    """``record[name]`` as provenance may hold it (None, an int64 or a short string); SkipSample('bad_field') otherwise."""
    value = record.get(name)
    if value is None or (isinstance(value, str) and len(value) <= 256):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT64_MAX:
        return value
    raise SkipSample("bad_field", f"{name} is {_short(value)}, expected an integer or a short string")


def _short(value):
    text = repr(value) if not isinstance(value, int) or abs(value) < 10 ** 30 else f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= 60 else text[:57] + "..."


def cells_from_html(html, first_row_header=False, max_grid=MAX_GRID):
    """PubTabNet-style ``html`` -> (cells, num_rows, num_cols) with boxes in source units.

    Raises SkipSample for structure problems (bad tokens, cell count mismatch,
    malformed boxes, no boxed cell) and ``too_large`` for a grid of more than
    ``max_grid`` slots.
    """
    structure = html.get("structure") if isinstance(html, dict) else None
    tokens = structure.get("tokens") if isinstance(structure, dict) else None
    html_cells = html.get("cells") if isinstance(html, dict) else None
    if tokens is None or html_cells is None:
        raise SkipSample("missing_field", "html.structure.tokens or html.cells")
    if not isinstance(html_cells, list):
        raise SkipSample("bad_structure", f"html.cells is {type(html_cells).__name__}, expected a list")
    try:
        grid = layout(tokens, max_grid)
    except GridTooLargeError as exc:
        raise SkipSample("too_large", f"{exc} (--max-grid)") from None
    except StructureError as exc:
        raise SkipSample("bad_structure", str(exc)) from None
    if first_row_header:
        first_row_as_header(grid)
    if len(grid.cells) != len(html_cells):
        raise SkipSample("cell_count_mismatch", f"{len(grid.cells)} <td> in structure, {len(html_cells)} cells")
    cells = []
    for gc, hc in zip(grid.cells, html_cells):
        if not isinstance(hc, dict):
            raise SkipSample("bad_structure", f"cell {gc.index} is {type(hc).__name__}, expected an object")
        bbox = hc.get("bbox")
        if bbox is not None:
            bbox = parse_box(bbox, f"cell {gc.index}")
        tokens = hc.get("tokens", [])
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise SkipSample("bad_structure", f"cell {gc.index}: tokens are not a list of strings")
        text = "".join(t for t in tokens if not (t.startswith("<") and t.endswith(">")))
        cells.append(Cell(bbox, gc.row, gc.col, gc.row_span, gc.col_span, gc.header, text))
    if not any(c.bbox is not None for c in cells):
        raise SkipSample("no_cells", "no cell has a box")
    return cells, grid.num_rows, grid.num_cols


def safe_join(root, relative):
    """``root / relative`` if it stays inside ``root``; SkipSample('path_escape') otherwise."""
    root = Path(root).resolve()
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise SkipSample("path_escape", repr(relative))
    path = (root / relative).resolve()
    if root != path and root not in path.parents:
        raise SkipSample("path_escape", relative)
    return path


class DatasetReader:
    """Interface every dataset module implements (see fintabnet.py, pubtabnet.py)."""

    name = ""
    description = ""
    splits = ()
    modes = ("table",)
    source_units = "px"
    categories = ()
    layout_help = ""
    raster = True  # raster sources are never upsampled by the automatic resolution

    def check_source(self, source, split, options):
        """Raise UserError (one line) if ``source`` does not look like this dataset or has no ``split``."""
        raise NotImplementedError

    def count_lines(self, source, split, options):
        """Annotation lines :meth:`annotation_lines` will yield, if cheap to know (progress bars); else None."""
        return None

    def annotation_lines(self, source, split, options):
        """Yield :class:`AnnotationLine` for ``split`` in a fixed order."""
        raise NotImplementedError

    def parse(self, line, options):
        """AnnotationLine -> TableAnnotation (raises SkipSample)."""
        raise NotImplementedError

    def open_page(self, source, annotation):
        """The page the table lives on, as a :class:`ddcache.page.Page` (raises SkipSample)."""
        raise NotImplementedError

    def require_dir(self, source):
        """``source`` as a Path; UserError if it is not a directory."""
        source = Path(source)
        if not source.is_dir():
            raise UserError(f"source directory {source} does not exist")
        return source
