"""PubTabNet 2.0.0 reader: PNG table images + one jsonl, boxes in image pixels (top-left origin).

Unlike FinTabNet it has real <thead> header rows. Every image is already a
table crop, so only table mode exists and the table box is the whole image.
"""
from pathlib import Path

from ..errors import UserError
from ..page import RasterPage
from .base import DatasetReader, SkipSample, TableAnnotation, cells_from_html, id_field, read_jsonl, safe_join, text_field

_FILE = "PubTabNet_2.0.0.jsonl"


class PubTabNetReader(DatasetReader):
    name = "pubtabnet"
    description = "PubTabNet 2.0.0: ~568K table images from PubMed Central (PNG + one jsonl)"
    splits = ("train", "val", "test")
    modes = ("table",)
    source_units = "px"
    raster = True
    categories = ("CELL", "ROW", "COLUMN")
    layout_help = (
        "pubtabnet/\n"
        "  train/*.png  val/*.png  test/*.png\n"
        "  PubTabNet_2.0.0.jsonl      one line per image, field `split` selects the split"
    )

    def check_source(self, source, split, options):
        source = self.require_dir(source)
        if split not in self.splits:
            raise UserError(f"pubtabnet has no split {split!r} (choose from {', '.join(self.splits)})")
        if not (source / _FILE).is_file():
            raise UserError(f"{source / _FILE} not found: is {source} an unpacked PubTabNet directory?")

    def annotation_lines(self, source, split, options):
        for line in read_jsonl(Path(source) / _FILE, _FILE, options.max_line_bytes):
            if line.record is not None and line.record.get("split") != split:
                continue  # other splits are not part of this build at all (not read, not skipped)
            yield line

    def parse(self, line, options):
        rec = line.record
        if "html" not in rec:
            raise SkipSample("missing_field", "html")
        filename, split = text_field(rec, "filename"), text_field(rec, "split")
        cells, num_rows, num_cols = cells_from_html(rec["html"], max_grid=options.max_grid)
        return TableAnnotation(
            source_file=f"{split}/{filename}",
            line_no=line.line_no,
            annotation_file=line.annotation_file,
            split=split,
            table_id=id_field(rec, "imgid"),
            table_bbox=None,  # the whole image, known once it is opened
            cells=cells,
            num_rows=num_rows,
            num_cols=num_cols,
        )

    def open_page(self, source, annotation):
        path = safe_join(source, annotation.source_file)
        page = RasterPage(path)
        annotation.table_bbox = (0.0, 0.0, page.width, page.height)
        return page
