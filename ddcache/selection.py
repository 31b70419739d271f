"""Which records and which boxes: the table-size filters and the category selection, one definition each.

The same :class:`RecordFilter` decides at build time (``ddcache build
--min-rows 3``: a table outside the bounds is skipped as ``filter:min_rows``)
and at read time (``CacheSource(..., record_filter=RecordFilter(min_rows=3))``:
the manifest's per-record index is compared, nothing is decoded, nothing
rebuilt). The quantities are a table's grid rows, grid columns and cells
with a box; bounds are inclusive, None means no bound.

:func:`keep_categories` drops the boxes of other categories from a decoded
sample (``["CELL"]`` for the cell detector, ``["ROW", "COLUMN"]`` for the
item detector); samples left without a box are kept.
"""
from dataclasses import asdict, dataclass

import numpy as np

from . import categories as C
from .errors import UserError

# bound name -> (quantity, manifest index column)
_QUANTITIES = {"rows": "num_rows", "cols": "num_cols", "cells": "num_cells"}
FILTERS = tuple(f"{side}_{q}" for q in _QUANTITIES for side in ("min", "max"))


@dataclass(frozen=True)
class RecordFilter:
    """Inclusive bounds on a table's rows, columns and boxed cells (None: no bound)."""

    min_rows: int = None
    max_rows: int = None
    min_cols: int = None
    max_cols: int = None
    min_cells: int = None
    max_cells: int = None

    @classmethod
    def from_options(cls, options):
        """The filter of the ``min_*/max_*`` entries of mapping ``options`` (other entries are ignored)."""
        return cls(**{name: options.get(name) for name in FILTERS})

    def as_options(self):
        """``{"min_rows": ..., ...}`` (every bound, None included): the manifest's ``build_options`` entries."""
        return asdict(self)

    def _checks(self):
        """(bound name, index column, is a lower bound, bound) for each bound that is set."""
        for name in FILTERS:
            bound = getattr(self, name)
            if bound is not None:
                side, quantity = name.split("_", 1)
                yield name, _QUANTITIES[quantity], side == "min", int(bound)

    def keep(self, num_rows, num_cols, num_cells):
        """Bool mask (arrays in, array out; scalars in, bool out): which tables pass every bound."""
        values = {"num_rows": np.asarray(num_rows), "num_cols": np.asarray(num_cols),
                  "num_cells": np.asarray(num_cells)}
        keep = np.ones(np.broadcast(*values.values()).shape, dtype=bool)
        for _, column, is_min, bound in self._checks():
            keep &= _passes(values[column], is_min, bound)
        return keep

    def rejects(self, num_rows, num_cols, num_cells):
        """The build's skip reason for one table (``"filter:min_rows"``, the first bound it fails) or None."""
        values = {"num_rows": num_rows, "num_cols": num_cols, "num_cells": num_cells}
        for name, column, is_min, bound in self._checks():
            if not _passes(values[column], is_min, bound):
                return f"filter:{name}"
        return None

    def select(self, index):
        """Sorted int64 positions of the records passing the filter; ``index`` holds the manifest index columns
        (``num_rows``, ``num_cols``, ``num_cells``: equal-length sequences)."""
        return np.flatnonzero(self.keep(index["num_rows"], index["num_cols"], index["num_cells"])).astype(np.int64)


def _passes(value, is_min, bound):
    return value >= bound if is_min else value <= bound


def category_ids(names):
    """Sorted ddcache category ids for ``names`` (case-insensitive), or None for None (all categories).

    Raises UserError for an unknown name.
    """
    if names is None:
        return None
    try:
        return tuple(sorted(C.ids_for(names)))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def keep_categories(sample, ids):
    """Drop the boxes (and their attributes) of categories not in ``ids`` from a decoded sample, in place.

    ``ids``: ddcache category ids, or None to keep everything. Returns the sample.
    """
    if ids is None:
        return sample
    keep = np.isin(sample["category_ids"], ids)
    sample["boxes"] = sample["boxes"][keep]
    sample["category_ids"] = sample["category_ids"][keep]
    sample["attributes"] = {k: v[keep] for k, v in sample["attributes"].items()}
    return sample
