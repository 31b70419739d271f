"""Small synthetic caches in the real on-disk format, written by the build's own writer (no rendering).

``make_cache(path, n, ...)`` encodes ``n`` samples (``codec.encode_record``)
and appends them with ``ddcache.writer.CacheWriter`` -- the writer
``ddcache build`` uses -- so records, keys, checksums, the per-record index
(``num_rows`` / ``num_cols`` / ``num_cells``), counts and the manifest are
exactly what a finished build leaves.

Sample ``i`` is a table of ``rows(i)`` x ``cols(i)`` cells drawn on a white
image whose pixel (0, 0) holds ``i % 256`` in every channel, so a test can
tell which record an image came from; boxes hold CELL, ROW and COLUMN
categories with their grid attributes.
"""
from pathlib import Path

import numpy as np

from ddcache import categories as C
from ddcache.codec import encode_record
from ddcache.manifest import record_key
from ddcache.writer import CacheHeader, CacheWriter


def default_rows(i):
    return 1 + i % 4


def default_cols(i):
    return 1 + (i // 4) % 3


def make_sample(i, rows, cols, cell_px=12, source_file="synthetic.jsonl"):
    """Sample dict (CONTRACTS.md) number ``i``: ``rows`` x ``cols`` grid, cells ``cell_px`` pixels square.

    Boxes: one CELL per grid slot, one ROW per row, one COLUMN per column
    (xyxy pixels, origin top-left). Pixel (0, 0) = ``i % 256`` marks the image.
    """
    h, w = rows * cell_px + 2, cols * cell_px + 2
    image = np.full((h, w, 3), 255, dtype=np.uint8)
    image[0, 0] = i % 256
    boxes, cats = [], []
    attr = {"row": [], "col": [], "row_span": [], "col_span": [], "header": []}

    def add(box, cat, row, col, rs, cs, header):
        boxes.append(box)
        cats.append(cat)
        for name, v in zip(("row", "col", "row_span", "col_span", "header"), (row, col, rs, cs, header)):
            attr[name].append(v)

    for r in range(rows):
        for c in range(cols):
            x0, y0 = 1 + c * cell_px, 1 + r * cell_px
            image[y0 + 3:y0 + cell_px - 3, x0 + 3:x0 + cell_px - 3] = 0  # some ink per cell
            add([x0, y0, x0 + cell_px, y0 + cell_px], C.CELL, r, c, 1, 1, int(r == 0))
    for r in range(rows):
        add([1, 1 + r * cell_px, w - 1, 1 + (r + 1) * cell_px], C.ROW, r, -1, -1, -1, -1)
    for c in range(cols):
        add([1 + c * cell_px, 1, 1 + (c + 1) * cell_px, h - 1], C.COLUMN, -1, c, -1, -1, -1)
    return {
        "image": image,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "category_ids": np.asarray(cats, dtype=np.int32),
        "attributes": {k: np.asarray(v, dtype=np.int32) for k, v in attr.items()},
        "num_rows": rows,
        "num_cols": cols,
        "provenance": {"dataset": "fintabnet", "split": "train", "source_file": source_file, "line_no": i,
                       "table_id": i, "page_size": [612.0, 792.0], "mediabox": [0.0, 0.0, 612.0, 792.0],
                       "table_bbox_src": [0.0, 0.0, 1.0, 1.0], "scale": 1.0, "crop_origin": [0, 0]},
    }


def write_records(path, raws, index_rows, dataset="fintabnet", split="train", mode="table", encoding="png",
                  shard=None, boxes_per_category=None):
    """Write already-encoded records ``raws`` (bytes, in key order) + their manifest into ``path``.

    ``index_rows``: one ``(num_rows, num_cols, num_cells)`` per record;
    ``boxes_per_category``: ``{name: count}`` for the manifest (as a build counts them).
    Returns ``path`` (a ``Path``).
    """
    header = CacheHeader(dataset, split, mode, {"encoding": encoding, "synthetic": True}, shard)
    with CacheWriter.open(path, header) as writer:
        for raw, index in zip(raws, index_rows):
            writer.append(raw, index)
        n = len(raws)
        writer.finish({"num_read": n, "num_tables_written": n,
                       "boxes_per_category": dict(sorted((boxes_per_category or {}).items())), "dropped_boxes": 0},
                      encoding=encoding)
    return Path(path)


def make_cache(path, n, encoding="png", rows=default_rows, cols=default_cols, start=0, shard=None, cell_px=12):
    """Write a cache of ``n`` synthetic samples (numbered ``start .. start+n-1``) at ``path``; return ``path``.

    ``rows(i)`` / ``cols(i)`` choose each sample's grid (defaults vary 1..4 x 1..3).
    The sample number ``i`` is in ``provenance["table_id"]`` and pixel (0, 0).
    """
    raws, index_rows, boxes = [], [], {}
    for i in range(start, start + n):
        s = make_sample(i, rows(i), cols(i), cell_px=cell_px)
        raws.append(encode_record(s, encoding))
        index_rows.append((s["num_rows"], s["num_cols"], int((s["category_ids"] == C.CELL).sum())))
        for cid in s["category_ids"].tolist():
            boxes[C.NAMES[cid]] = boxes.get(C.NAMES[cid], 0) + 1
    return write_records(path, raws, index_rows, encoding=encoding, shard=shard, boxes_per_category=boxes)


def _stored_value(path, key_index):
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return txn.get(record_key(key_index).encode())
    finally:
        env.close()


def corrupt_record(path, key_index=0):
    """Flip one byte inside record ``key_index``'s image bytes in ``path/data.mdb``; return its key.

    LMDB stores the value verbatim in a data page; the file may also hold a
    stale copy in a freed page, so each occurrence is tried and the flip kept
    where it changes what LMDB returns for the key.
    """
    import msgpack

    raw = _stored_value(path, key_index)
    image = msgpack.unpackb(raw, raw=False)["image"]["data"]
    inner = raw.find(image) + len(image) // 2
    data = (Path(path) / "data.mdb").read_bytes()
    start = data.find(raw)
    while start >= 0:
        flip_byte(path, start + inner)
        if _stored_value(path, key_index) != raw:
            return record_key(key_index)
        flip_byte(path, start + inner)  # a stale copy: undo
        start = data.find(raw, start + 1)
    raise RuntimeError(f"record {record_key(key_index)} not found in {path}/data.mdb")


def flip_byte(path, offset):
    """XOR one byte of ``path/data.mdb`` at ``offset`` with 0xFF."""
    with open(Path(path) / "data.mdb", "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
