"""The reader interface: what one dataset module implements to be buildable.

A reader turns one raw annotation line into a :class:`TableAnnotation` (in
the dataset's own coordinates) and opens the page it lives on. Everything
after that (rendering, cropping, encoding, storing) is dataset-independent.

The build calls, in this order: ``check_source(source, split, options)``
once; ``count_lines(source, split, options)`` once (the progress bar's total,
may be None); ``annotation_lines(source, split, options)`` once; then, in
worker processes, ``parse(line, options)`` and ``open_page(source,
annotation)`` per line. ``options`` is a :class:`ReadOptions`.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SkipSample, UserError
from ..grid import StructureError, first_row_as_header, layout


@dataclass(frozen=True)
class ReadOptions:
    """How to read annotation lines (``ddcache build`` options; part of what decides a cache's records).

    ``first_row_header``: mark grid row 0 as header (for datasets without
    ``<thead>``); ``annotations``: which FinTabNet files, ``"table"``
    (``table_*.jsonl``, with the table box) or ``"cell"`` (``cell_*.jsonl``:
    the table box is the union of the cell boxes).
    """

    first_row_header: bool = False
    annotations: str = "table"


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

    @property
    def page_key(self):
        return self.record.get("filename") if isinstance(self.record, dict) else None


def read_jsonl(path, display_name):
    """Yield :class:`AnnotationLine` for each line of ``path`` (blank lines are not annotations)."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                yield AnnotationLine(display_name, line_no, record)
            except ValueError as exc:
                yield AnnotationLine(display_name, line_no, None, f"{exc}"[:200])


def cells_from_html(html, first_row_header=False):
    """PubTabNet-style ``html`` -> (cells, num_rows, num_cols) with boxes in source units.

    Raises SkipSample for structure problems (bad tokens, cell count mismatch,
    malformed boxes, no boxed cell).
    """
    try:
        tokens = html["structure"]["tokens"]
        html_cells = html["cells"]
    except (KeyError, TypeError):
        raise SkipSample("missing_field", "html.structure.tokens or html.cells") from None
    try:
        grid = layout(tokens)
    except StructureError as exc:
        raise SkipSample("bad_structure", str(exc)) from None
    if first_row_header:
        first_row_as_header(grid)
    if len(grid.cells) != len(html_cells):
        raise SkipSample("cell_count_mismatch", f"{len(grid.cells)} <td> in structure, {len(html_cells)} cells")
    cells = []
    for gc, hc in zip(grid.cells, html_cells):
        bbox = hc.get("bbox") if isinstance(hc, dict) else None
        if bbox is not None:
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise SkipSample("bad_box", f"cell {gc.index}: {bbox!r}")
            if bbox[2] < bbox[0] or bbox[3] < bbox[1]:
                raise SkipSample("bad_box", f"cell {gc.index}: inverted {bbox!r}")
            bbox = tuple(float(v) for v in bbox)
        text = "".join(t for t in hc.get("tokens", []) if not (t.startswith("<") and t.endswith(">"))) if isinstance(hc, dict) else ""
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
