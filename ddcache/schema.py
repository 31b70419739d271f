"""Type and range checks for data that crosses a trust boundary, and the limits they enforce.

A cache (or a raw dataset) may come from someone else, so nothing read from
disk is trusted: the record codec (``codec.decode_record``) and the manifest
reader (``manifest.read_manifest``) check every field once, where bytes
become Python values, with the functions below. Code after that boundary can
rely on types, ranges and consistency (shape matches bytes, boxes finite,
known category ids) instead of re-checking or crashing on a surprise.

Every check raises :class:`SchemaError` naming the field; the codec turns it
into ``CorruptRecordError(key)``, the manifest reader into ``UserError(path)``.

The limits bound the memory one record or manifest can make a reader
allocate (an attacker controls declared sizes, so they are checked before
anything is allocated from them). They are documented in the README
("Reliability").
"""
import math

MAX_IMAGE_PIXELS = 1 << 25  # 33.5M pixels (e.g. 5792 x 5792): at most ~100 MB decoded (BGR)
MAX_RECORD_BYTES = 1 << 28  # 256 MiB per stored record (a raw image at the pixel limit is 100 MB)
MAX_BOXES = 1 << 20  # boxes per record
MAX_MANIFEST_BYTES = 1 << 28  # 256 MiB of manifest.json: about 5 million records per cache
MAX_TEXT = 4096  # characters in one string (a file name, a dataset name, a provenance value)
MAX_LIST = 1 << 16  # items in one provenance list (page mode: the page's table ids)
MAX_FIELDS = 64  # keys in one provenance / attribute map
INT32_MAX = (1 << 31) - 1
INT64_MAX = (1 << 63) - 1


class SchemaError(ValueError):
    """A value that does not have the type, range or shape the format promises."""


def require_map(value, field, max_keys=None):
    """``value`` if it is a dict with str keys (and at most ``max_keys`` of them)."""
    if not isinstance(value, dict):
        raise SchemaError(f"{field} is {_kind(value)}, expected a map")
    if max_keys is not None and len(value) > max_keys:
        raise SchemaError(f"{field} has {len(value)} entries (at most {max_keys})")
    for k in value:
        if not isinstance(k, str):
            raise SchemaError(f"{field} has a key of type {type(k).__name__}")
    return value


def require_fields(mapping, field, names):
    """SchemaError naming the first of ``names`` missing from ``mapping``."""
    missing = [n for n in names if n not in mapping]
    if missing:
        raise SchemaError(f"{field} has no {', '.join(missing)}")


def require_int(value, field, lo=0, hi=INT64_MAX):
    """``value`` if it is an int (not a bool, not a float) in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(f"{field} is {_kind(value)}, expected an integer")
    if not lo <= value <= hi:
        raise SchemaError(f"{field} = {_short(value)} is outside [{lo}, {hi}]")
    return value


def require_number(value, field):
    """``value`` as a float if it is a finite int or float (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"{field} is {_kind(value)}, expected a number")
    try:
        out = float(value)
    except OverflowError:
        raise SchemaError(f"{field} is too large") from None
    if not math.isfinite(out):
        raise SchemaError(f"{field} is {out}, expected a finite number")
    return out


def require_str(value, field, max_len=MAX_TEXT, choices=None):
    """``value`` if it is a str of at most ``max_len`` characters (and one of ``choices``)."""
    if not isinstance(value, str):
        raise SchemaError(f"{field} is {_kind(value)}, expected a string")
    if len(value) > max_len:
        raise SchemaError(f"{field} is {len(value)} characters long (at most {max_len})")
    if choices is not None and value not in choices:
        raise SchemaError(f"{field} = {_short(value)} is not one of {', '.join(sorted(choices))}")
    return value


def require_list(value, field, length=None, max_len=None):
    """``value`` if it is a list (of exactly ``length`` / at most ``max_len`` items)."""
    if not isinstance(value, list):
        raise SchemaError(f"{field} is {_kind(value)}, expected a list")
    if length is not None and len(value) != length:
        raise SchemaError(f"{field} has {len(value)} items, expected {length}")
    if max_len is not None and len(value) > max_len:
        raise SchemaError(f"{field} has {len(value)} items (at most {max_len})")
    return value


def require_int_list(value, field, length=None, lo=0, hi=INT32_MAX):
    """``value`` if it is a list of ints in ``[lo, hi]`` (checked in bulk: manifests hold millions)."""
    require_list(value, field, length=length)
    if not all(type(v) is int for v in value):
        bad = next(v for v in value if type(v) is not int)
        raise SchemaError(f"{field} holds {_kind(bad)}, expected integers")
    if value and not (lo <= min(value) and max(value) <= hi):
        raise SchemaError(f"{field} holds a value outside [{lo}, {hi}]")
    return value


def require_scalar(value, field):
    """``value`` if it is None, a bool, an int64, a finite float or a short string (what provenance may hold)."""
    kind = type(value)
    if kind is str:
        if len(value) > MAX_TEXT:
            raise SchemaError(f"{field} is {len(value)} characters long (at most {MAX_TEXT})")
    elif kind is int:
        if not -INT64_MAX <= value <= INT64_MAX:
            raise SchemaError(f"{field} = {_short(value)} is outside the int64 range")
    elif kind is float:
        if not math.isfinite(value):
            raise SchemaError(f"{field} is {value}, expected a finite number")
    elif value is not None and kind is not bool:
        raise SchemaError(f"{field} is {_kind(value)}, expected a number, a string or null")
    return value


def require_flat_map(value, field):
    """A map whose values are scalars or lists of scalars (provenance): bounded size, no nesting below that."""
    require_map(value, field, max_keys=MAX_FIELDS)
    for k, v in value.items():
        if len(k) > MAX_TEXT:
            raise SchemaError(f"{field} has a key of {len(k)} characters (at most {MAX_TEXT})")
        if type(v) is list:
            if len(v) > MAX_LIST:
                raise SchemaError(f"{field}.{k} has {len(v)} items (at most {MAX_LIST})")
            for item in v:
                require_scalar(item, f"{field}.{k}[]")
        else:
            require_scalar(v, f"{field}.{k}")
    return value


def _kind(value):
    """A short description of a value's type for messages (never the value itself: it may be huge)."""
    return "null" if value is None else f"a {type(value).__name__}"


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
