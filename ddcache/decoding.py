"""Decoding as a map function: an :class:`~ddcache.source.EncodedRecord` -> the sample dict of docs/CONTRACTS.md.

:class:`RecordDecoder` is a small picklable callable, so it runs wherever a
map step runs: in this process, or in map worker processes that receive the
small encoded record instead of the decoded image. Its options travel with
it (not with each record): which categories' boxes to keep and whether to
keep the per-box attributes and the provenance (less to send between
processes).
"""
from .codec import decode_record
from .selection import category_ids, keep_categories


class RecordDecoder:
    """EncodedRecord -> decoded sample dict (CONTRACTS.md, plus ``index`` and ``epoch``); picklable.

    ``categories``: category names whose boxes are kept (e.g. ``["CELL"]``),
    None = all; attributes follow their boxes. ``with_attributes`` /
    ``with_provenance`` False drop those entries. Raises UserError for an
    unknown category name (at construction) and ``CorruptRecordError``
    naming the key for a record that does not decode.
    """

    def __init__(self, categories=None, with_attributes=True, with_provenance=True):
        self.category_ids = category_ids(categories)
        self.with_attributes = bool(with_attributes)
        self.with_provenance = bool(with_provenance)

    def __call__(self, record):
        sample = decode_record(record.key, record.raw, with_image=True)
        sample["index"] = record.index
        sample["epoch"] = record.epoch
        keep_categories(sample, self.category_ids)
        if not self.with_attributes:
            del sample["attributes"]
        if not self.with_provenance:
            del sample["provenance"]
        return sample
