"""FinTabNet reader (IBM, 2021): one-page PDFs + PubTabNet-style html in jsonl.

Boxes are PDF points, origin bottom-left, in the page's user space; there is
no <thead>, so header flags exist only with the opt-in ``first_row_header``.
"""
from pathlib import Path

from ..errors import UserError
from ..geometry import union
from ..page import PdfPage
from .base import (DatasetReader, SkipSample, TableAnnotation, cells_from_html, count_jsonl_lines, id_field, parse_box,
                   read_jsonl, safe_join, text_field)

_FILE = "FinTabNet_1.0.0_{kind}_{split}.jsonl"


class FinTabNetReader(DatasetReader):
    name = "fintabnet"
    description = "FinTabNet 1.0.0: ~112K tables from S&P 500 annual reports (one-page PDFs + jsonl)"
    splits = ("train", "val", "test")
    modes = ("table", "page")
    source_units = "pt"
    raster = False
    categories = ("TABLE", "CELL", "ROW", "COLUMN")
    layout_help = (
        "fintabnet/\n"
        "  pdf/<TICKER>/<YEAR>/page_<N>.pdf          one page per PDF\n"
        "  FinTabNet_1.0.0_table_{train,val,test}.jsonl   (with table bbox; default)\n"
        "  FinTabNet_1.0.0_cell_{train,val,test}.jsonl    (--annotations cell: table box = union of cells)"
    )

    def annotation_path(self, source, split, options):
        kind = options.annotations
        if kind not in ("table", "cell"):
            raise UserError(f"--annotations must be 'table' or 'cell', not {kind!r}")
        return Path(source) / _FILE.format(kind=kind, split=split)

    def check_source(self, source, split, options):
        source = self.require_dir(source)
        if split not in self.splits:
            raise UserError(f"fintabnet has no split {split!r} (choose from {', '.join(self.splits)})")
        path = self.annotation_path(source, split, options)
        if not path.is_file():
            raise UserError(f"{path} not found: is {source} an unpacked FinTabNet directory? (see `ddcache describe fintabnet`)")
        if not (source / "pdf").is_dir():
            raise UserError(f"{source / 'pdf'} not found: FinTabNet PDFs are expected under pdf/")

    def count_lines(self, source, split, options):
        """Non-blank lines of the split's jsonl (one table each): a fast scan, no JSON parsing."""
        return count_jsonl_lines(self.annotation_path(source, split, options))

    def annotation_lines(self, source, split, options):
        path = self.annotation_path(source, split, options)
        yield from read_jsonl(path, path.name, options.max_line_bytes)

    def parse(self, line, options):
        rec = line.record
        if "html" not in rec:
            raise SkipSample("missing_field", "html")
        filename = text_field(rec, "filename")
        cells, num_rows, num_cols = cells_from_html(rec["html"], options.first_row_header, options.max_grid)
        bbox = rec.get("bbox")
        if bbox is None:
            bbox = union([c.bbox for c in cells if c.bbox is not None])
        else:
            bbox = parse_box(bbox, "table bbox", strict=True)
        return TableAnnotation(
            source_file=filename,
            line_no=line.line_no,
            annotation_file=line.annotation_file,
            split=text_field(rec, "split", required=False) or "",
            table_id=id_field(rec, "table_id"),
            table_bbox=tuple(float(v) for v in bbox),
            cells=cells,
            num_rows=num_rows,
            num_cols=num_cols,
        )

    def open_page(self, source, annotation):
        path = safe_join(Path(source) / "pdf", annotation.source_file)
        if not path.is_file():
            raise SkipSample("missing_file", annotation.source_file)
        return PdfPage(path)
