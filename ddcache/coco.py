"""Decoded samples -> COCO detection dicts (what ``ddcache export`` writes).

Everything here is pure except :meth:`CocoBuilder.write`. Coordinates:
sample boxes are xyxy float pixels of the sample's image (origin top-left,
x right, y down, see docs/CONTRACTS.md); COCO ``bbox`` is ``[x, y, w, h]``
in the same pixels, ``area`` = w*h in pixels². Boxes are converted as
stored (no clipping, no rounding) so an export is a faithful view of the
cache.

Ids: COCO ``category_id`` is the fixed ddcache id (ddcache.categories), so
exports of different caches agree. Image and annotation ids are
1-based and assigned in the order samples are added.
"""
import json

import numpy as np

from . import __version__
from .categories import NAMES

SUPERCATEGORY = "table"


def coco_categories(category_ids):
    """COCO ``categories`` entries for ddcache category ids.

    Input: iterable of ddcache ids (e.g. ``[2, 3]``). Output: list of
    ``{"id", "name", "supercategory"}`` sorted by id (COCO tools index by id,
    a stable order keeps exports byte-identical). Raises ValueError on an id
    that ddcache.categories does not know.
    """
    out = []
    for cid in sorted({int(c) for c in category_ids}):
        if cid not in NAMES:
            raise ValueError(f"unknown category id {cid}; known: {sorted(NAMES)}")
        out.append({"id": cid, "name": NAMES[cid], "supercategory": SUPERCATEGORY})
    return out


def _jsonable(value):
    """numpy scalars/arrays (as found in provenance) -> plain Python for json.dump."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        # msgpack may hand back bytes; JSON has no bytes type
        return value.decode("utf-8", errors="replace")
    return value


def _image_size(sample, image_size):
    """(width, height) in pixels: explicit, else the decoded image, else the encoded image's shape."""
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    if sample.get("image") is not None:
        h, w = np.asarray(sample["image"]).shape[:2]
        return int(w), int(h)
    if sample.get("image_encoded") is not None:
        # decode_record(with_image=False) keeps the shape, so export need not decode pixels
        h, w = sample["image_encoded"]["shape"][:2]
        return int(w), int(h)
    raise ValueError(f"sample {sample.get('key')!r} has no image to take the size from; pass image_size")


def sample_to_coco(sample, image_id, file_name, category_ids=None, first_annotation_id=1, image_size=None):
    """One decoded sample -> (COCO image entry, list of COCO annotation entries).

    Inputs:
      sample: decoded sample dict (docs/CONTRACTS.md): ``boxes`` float [N, 4]
        xyxy pixels, ``category_ids`` int [N], ``attributes`` dict of int [N],
        ``provenance``, ``key``, ``num_rows``/``num_cols``; the size comes from
        ``image`` [H, W, 3] or ``image_encoded["shape"]`` unless ``image_size``.
      image_id: int id for the image entry.
      file_name: the image's file name as the export writes it.
      category_ids: ddcache ids to keep (None = keep every box).
      first_annotation_id: id of the first kept box; the following boxes get
        consecutive ids, so the caller continues at
        ``first_annotation_id + len(annotations)``.
      image_size: optional (width, height) in pixels.

    Output: ``image`` = ``{"id", "file_name", "width", "height",
    "ddcache_key", "num_rows", "num_cols", "ddcache_provenance"}`` and one
    annotation per kept box ``{"id", "image_id", "category_id", "bbox" [x, y,
    w, h] px, "area" w*h px², "iscrowd": 0, "attributes": {name: int}}``,
    in the sample's box order.
    """
    width, height = _image_size(sample, image_size)
    image = {
        "id": int(image_id),
        "file_name": str(file_name),
        "width": width,
        "height": height,
        "ddcache_key": sample.get("key"),
        "num_rows": int(sample.get("num_rows", 0)),
        "num_cols": int(sample.get("num_cols", 0)),
        "ddcache_provenance": _jsonable(sample.get("provenance", {})),
    }
    boxes = np.asarray(sample["boxes"], dtype=np.float64).reshape(-1, 4)
    cats = np.asarray(sample["category_ids"]).reshape(-1)
    attributes = {name: np.asarray(v).reshape(-1) for name, v in sorted(sample.get("attributes", {}).items())}
    keep = None if category_ids is None else {int(c) for c in category_ids}
    annotations = []
    for i, (box, cid) in enumerate(zip(boxes, cats)):
        if keep is not None and int(cid) not in keep:
            continue
        x0, y0, x1, y1 = (float(v) for v in box)
        w, h = x1 - x0, y1 - y0
        annotations.append(
            {
                "id": int(first_annotation_id) + len(annotations),
                "image_id": int(image_id),
                "category_id": int(cid),
                "bbox": [x0, y0, w, h],
                "area": w * h,
                "iscrowd": 0,
                "attributes": {name: int(v[i]) for name, v in attributes.items()},
            }
        )
    return image, annotations


class CocoBuilder:
    """Accumulates samples into one COCO detection dataset.

    Image ids are 1..n in the order :meth:`add` is called, annotation ids
    1..m in the same order (box order within a sample), so equal inputs give
    equal output. ``category_ids`` (ddcache ids, None = all four) selects
    both the kept boxes and the ``categories`` list.
    """

    def __init__(self, category_ids=None, info=None):
        self.category_ids = sorted(NAMES) if category_ids is None else sorted({int(c) for c in category_ids})
        self.categories = coco_categories(self.category_ids)  # validates the ids early
        # no timestamp by default: exports of the same cache stay byte-identical
        self.info = dict(info) if info is not None else {"description": "ddcache export", "version": __version__}  # export.is_ddcache_export reads it
        self.images = []
        self.annotations = []

    def add(self, sample, file_name, image_size=None):
        """Add one decoded sample; returns its image id. See :func:`sample_to_coco` for the inputs."""
        image_id = len(self.images) + 1
        image, anns = sample_to_coco(
            sample,
            image_id,
            file_name,
            category_ids=self.category_ids,
            first_annotation_id=len(self.annotations) + 1,
            image_size=image_size,
        )
        self.images.append(image)
        self.annotations.extend(anns)
        return image_id

    def to_dict(self):
        """The dataset ``{"info", "images", "annotations", "categories"}`` (lists are copies)."""
        return {
            "info": dict(self.info),
            "images": list(self.images),
            "annotations": list(self.annotations),
            "categories": list(self.categories),
        }

    def write(self, path):
        """Write :meth:`to_dict` as JSON to ``path`` (the only I/O in this module).

        ``allow_nan=False``: a non-finite number raises ValueError instead of
        writing ``NaN``, which is not JSON (the record schema keeps them out).
        """
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, allow_nan=False)
