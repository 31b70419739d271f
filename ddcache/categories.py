"""Box categories shared by every cache, dataflow and trainer.

Ids are fixed (not per-cache) so caches built from different datasets can be
mixed in one training run without remapping.
"""

TABLE = 1
CELL = 2
ROW = 3
COLUMN = 4

NAMES = {TABLE: "TABLE", CELL: "CELL", ROW: "ROW", COLUMN: "COLUMN"}
IDS = {name: cid for cid, name in NAMES.items()}


def ids_for(names):
    """Map category names (case-insensitive) to ids; raise ValueError naming an unknown one."""
    out = []
    for name in names:
        key = str(name).upper()
        if key not in IDS:
            raise ValueError(f"unknown category {name!r}; known: {', '.join(IDS)}")
        out.append(IDS[key])
    return out
