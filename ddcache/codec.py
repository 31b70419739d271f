"""Record codec: one training sample <-> msgpack bytes.

Why msgpack and not pickle: a cache may come from someone else, and
unpickling can execute code; msgpack only yields plain data. Numpy arrays are
stored as ``{"dtype", "shape", "data"}`` maps with a whitelist of dtypes (we
deliberately do not use msgpack-numpy: it falls back to pickle for object
arrays).

Images are stored encoded; the encoding is chosen per cache (see
``ENCODINGS``). Records are decoded lazily by the reader, so a dataflow can
decode images in worker processes.

This is the read boundary for records: :func:`check_payload` is the record
schema (types, ranges, shapes consistent with the bytes, image size from the
PNG / JPEG header capped before decoding, known category ids, finite boxes,
provenance a flat map), applied on decode and on encode. Every failure is a
``CorruptRecordError`` naming the key.
"""
import hashlib
import math

import cv2
import msgpack
import numpy as np

from .categories import NAMES
from .errors import CorruptRecordError
from .image_header import HeaderError, jpeg_size, png_size
from .schema import (INT32_MAX, INT64_MAX, MAX_BOXES, MAX_FIELDS, MAX_IMAGE_PIXELS, MAX_RECORD_BYTES, SchemaError,
                     require_fields, require_flat_map, require_int, require_int_list, require_map,
                     require_str)

# OpenCV logs a damaged PNG / JPEG on stderr ("[ WARN:0@0.01] global grfmt_png.cpp ... incomplete") on top of
# the error it returns; that error becomes one CorruptRecordError / skip line, so its own line is noise.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

RECORD_VERSION = 1
_DTYPES = {"uint8", "int32", "int64", "float32", "float64"}
_ITEMSIZE = {name: np.dtype(name).itemsize for name in _DTYPES}
_KNOWN_CATEGORY = np.zeros(max(NAMES) + 1, dtype=bool)  # lookup table: id -> is a ddcache category
_KNOWN_CATEGORY[sorted(NAMES)] = True


class _Encoding:
    """One image encoding: name, encoder, decoder, and how to read the image size its bytes declare.

    ``declared_size(data)`` -> (height, width) without decoding (None: the
    size follows from the byte count, as for raw). The record check compares
    it with the stored shape before anything is decoded.
    """

    def __init__(self, name, encode, decode, lossless, declared_size):
        self.name, self.encode, self.decode, self.lossless = name, encode, decode, lossless
        self.declared_size = declared_size


def _gray_if_neutral(img):
    """A 1-channel view when B == G == R everywhere (black text on white: most tables).

    Encoding one channel instead of three is lossless here, ~3x faster and
    ~45% smaller; OpenCV's IMREAD_COLOR decodes it back to 3 equal channels.
    """
    if img.ndim == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]):
        return img[..., 0]
    return img


def _png_encode(img, quality):
    # Compression level 1: table crops are mostly white, so level 1 compresses
    # as well as the default 3 and encodes faster (measured on FinTabNet-size crops).
    ok, buf = cv2.imencode(".png", _gray_if_neutral(img), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _jpeg_encode(img, quality):
    ok, buf = cv2.imencode(".jpg", _gray_if_neutral(img), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def _cv2_decode(data, shape):
    # IGNORE_ORIENTATION: the stored shape is the header's size; an EXIF rotation would silently transpose it.
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ValueError("image bytes do not decode")
    if tuple(img.shape) != tuple(shape):
        raise ValueError(f"decoded image has shape {img.shape}, record says {tuple(shape)}")
    return img


def _raw_encode(img, quality):
    return np.ascontiguousarray(img, dtype=np.uint8).tobytes()


def _raw_decode(data, shape):
    expected = int(np.prod(shape))
    if len(data) != expected:
        raise ValueError(f"raw image has {len(data)} bytes, expected {expected}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


ENCODINGS = {
    "png": _Encoding("png", _png_encode, _cv2_decode, lossless=True, declared_size=png_size),
    "jpeg": _Encoding("jpeg", _jpeg_encode, _cv2_decode, lossless=False, declared_size=jpeg_size),
    "raw": _Encoding("raw", _raw_encode, _raw_decode, lossless=True, declared_size=None),
}
RECORD_FIELDS = ("image", "boxes", "category_ids", "attributes", "num_rows", "num_cols", "provenance")


def encode_image(img, encoding="png", quality=90):
    """uint8 HxWx3 BGR image -> ``{"enc", "shape", "data"}`` map."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown image encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")
    img = np.ascontiguousarray(img, dtype=np.uint8)
    return {"enc": encoding, "shape": list(img.shape), "data": ENCODINGS[encoding].encode(img, quality)}


def check_image(entry, field="image"):
    """Validate an ``{"enc", "shape", "data"}`` map without decoding it; return it.

    ``shape`` must be ``[H, W, 3]`` with ``H * W <= MAX_IMAGE_PIXELS`` and
    agree with the bytes: their length for raw, the PNG / JPEG header's size
    otherwise. So a decoder never allocates more than the limit, whatever
    the header of a hostile image declares. Raises SchemaError.
    """
    require_map(entry, field)
    require_fields(entry, field, ("enc", "shape", "data"))
    enc = ENCODINGS[require_str(entry["enc"], f"{field}.enc", 16, choices=ENCODINGS)]
    h, w, c = require_int_list(entry["shape"], f"{field}.shape", length=3, lo=1)
    if c != 3:
        raise SchemaError(f"{field}.shape {[h, w, c]} is not [height, width, 3]")
    if h * w > MAX_IMAGE_PIXELS:
        raise SchemaError(f"{field} is {w}x{h} pixels, more than the limit of {MAX_IMAGE_PIXELS}")
    data = entry["data"]
    if not isinstance(data, bytes):
        raise SchemaError(f"{field}.data is {type(data).__name__}, expected bytes")
    if enc.declared_size is None:
        if len(data) != h * w * c:
            raise SchemaError(f"{field}: {len(data)} raw bytes for shape {[h, w, c]}")
    else:
        try:
            declared = enc.declared_size(data)
        except HeaderError as exc:
            raise SchemaError(f"{field}: {exc}") from None
        if declared != (h, w):
            raise SchemaError(f"{field}: the {enc.name} header says {declared[1]}x{declared[0]}, the record {w}x{h}")
    return entry


def decode_image(entry):
    """``{"enc", "shape", "data"}`` map -> uint8 HxWx3 BGR image (raises ValueError, SchemaError included)."""
    check_image(entry)
    return ENCODINGS[entry["enc"]].decode(entry["data"], entry["shape"])


def pack_array(arr):
    """numpy array -> msgpack-safe map."""
    arr = np.ascontiguousarray(arr)
    if arr.dtype.name not in _DTYPES:
        raise ValueError(f"dtype {arr.dtype} is not storable")
    return {"dtype": arr.dtype.name, "shape": list(arr.shape), "data": arr.tobytes()}


def unpack_array(entry, field="array", dtype=None, shape=None):
    """Inverse of :func:`pack_array`, checked: a writable array, or SchemaError (a ValueError).

    ``dtype``: the one dtype allowed (default: any of the whitelist).
    ``shape``: a template, e.g. ``(None, 4)`` (None = any size). The byte
    count must match the shape exactly, so a lying shape cannot make numpy
    read past the data or allocate from it. (Written out rather than with the
    ``schema`` helpers: it runs 8 times per record on the training path.)
    """
    if type(entry) is not dict or not ("dtype" in entry and "shape" in entry and "data" in entry):
        raise SchemaError(f"{field} is not a {{dtype, shape, data}} map")
    name, dims, data = entry["dtype"], entry["shape"], entry["data"]
    if type(name) is not str or name not in (_DTYPES if dtype is None else (dtype,)):
        raise SchemaError(f"{field}.dtype {str(name)[:20]!r} is not allowed")
    if type(dims) is not list or len(dims) > 8 or not all(type(d) is int and 0 <= d <= INT64_MAX for d in dims):
        raise SchemaError(f"{field}.shape is not a list of at most 8 non-negative integers")
    if shape is not None and (len(dims) != len(shape) or any(w is not None and w != d for w, d in zip(shape, dims))):
        raise SchemaError(f"{field}.shape {dims} does not match {list(shape)}")
    if type(data) is not bytes:
        raise SchemaError(f"{field}.data is {type(data).__name__}, expected bytes")
    if math.prod(dims) * _ITEMSIZE[name] != len(data):
        raise SchemaError(f"{field}: {len(data)} bytes for {name} of shape {dims}")
    return np.frombuffer(data, dtype=name).reshape(dims).copy()


def encode_record(sample, encoding="png", quality=90):
    """Sample dict (CONTRACTS.md layout, image as an array) -> msgpack bytes.

    The output is deterministic for equal inputs (stable key order, no
    timestamps), which is what makes builds reproducible across worker counts.
    The payload passes the same checks as on reading (:func:`check_payload`),
    so a builder never writes a record that readers refuse (SchemaError).
    """
    payload = {
        "v": RECORD_VERSION,
        "image": encode_image(sample["image"], encoding, quality),
        "boxes": pack_array(np.asarray(sample["boxes"], dtype=np.float32).reshape(-1, 4)),
        "category_ids": pack_array(np.asarray(sample["category_ids"], dtype=np.int32).reshape(-1)),
        "attributes": {
            name: pack_array(np.asarray(values, dtype=np.int32).reshape(-1))
            for name, values in sorted(sample.get("attributes", {}).items())
        },
        "num_rows": int(sample.get("num_rows", 0)),
        "num_cols": int(sample.get("num_cols", 0)),
        "provenance": sample.get("provenance", {}),
    }
    check_payload(payload)
    return msgpack.packb(payload, use_bin_type=True)


def check_payload(payload):
    """The record schema: an unpacked record -> its arrays ``(boxes, category_ids, attributes)``; SchemaError otherwise.

    Checks (README "Reliability"): version; image map (see :func:`check_image`);
    boxes float32 ``[N, 4]`` finite with x0 <= x1 and y0 <= y1, N <= MAX_BOXES;
    category ids int32 ``[N]`` among ``categories.NAMES``; attributes a map
    of int32 ``[N]`` arrays; ``num_rows`` / ``num_cols`` non-negative int32;
    provenance a flat map of scalars and lists of scalars (strings <= 4096
    characters, no NaN).
    """
    require_map(payload, "record")
    if payload.get("v") != RECORD_VERSION:
        raise SchemaError("not a ddcache record (wrong version)")
    require_fields(payload, "record", RECORD_FIELDS)
    check_image(payload["image"])
    boxes = unpack_array(payload["boxes"], "boxes", "float32", (None, 4))
    n = len(boxes)
    if n > MAX_BOXES:
        raise SchemaError(f"{n} boxes, more than the limit of {MAX_BOXES}")
    if not np.isfinite(boxes).all():
        raise SchemaError("boxes hold NaN or infinite coordinates")
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise SchemaError("a box has x1 < x0 or y1 < y0")
    cats = unpack_array(payload["category_ids"], "category_ids", "int32", (n,))
    if n and (cats.min() < 0 or cats.max() >= len(_KNOWN_CATEGORY) or not _KNOWN_CATEGORY[cats].all()):
        unknown = sorted(set(cats.tolist()) - set(NAMES))[:5]
        raise SchemaError(f"category ids {unknown} are not ddcache categories")
    attrs = require_map(payload["attributes"], "attributes", max_keys=MAX_FIELDS)
    attributes = {}
    for name, entry in attrs.items():
        require_str(name, "attribute name", 64)
        attributes[name] = unpack_array(entry, f"attributes.{name}", "int32", (n,))
    require_int(payload["num_rows"], "num_rows", 0, INT32_MAX)
    require_int(payload["num_cols"], "num_cols", 0, INT32_MAX)
    require_flat_map(payload["provenance"], "provenance")
    return boxes, cats, attributes


def _refuse_ext(code, data):
    raise SchemaError(f"msgpack extension type {code} is not part of a record")


def decode_record(key, raw, with_image=True):
    """msgpack bytes -> sample dict (CONTRACTS.md); raises CorruptRecordError naming ``key``.

    Every field is checked (:func:`check_payload`) before use, the image's
    declared size before it is decoded. ``with_image=False`` skips the
    pixel decode (for filters, export and statistics) and leaves the checked
    encoded map under ``image_encoded``.
    """
    try:
        if len(raw) > MAX_RECORD_BYTES:
            raise SchemaError(f"{len(raw)} bytes, more than the record limit of {MAX_RECORD_BYTES}")
        payload = msgpack.unpackb(raw, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
        boxes, cats, attributes = check_payload(payload)
        sample = {
            "key": key,
            "boxes": boxes,
            "category_ids": cats,
            "attributes": attributes,
            "num_rows": payload["num_rows"],
            "num_cols": payload["num_cols"],
            "provenance": payload["provenance"],
        }
        if with_image:
            sample["image"] = decode_image(payload["image"])
        else:
            sample["image_encoded"] = payload["image"]
        return sample
    except CorruptRecordError:
        raise
    except Exception as exc:  # any decode failure is a corrupt record, whatever raised it
        raise CorruptRecordError(key, f"{type(exc).__name__}: {exc}") from None


def checksum(raw):
    """Hex digest stored per record in the manifest (blake2b, 128 bit: fast and collision-safe here)."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()
