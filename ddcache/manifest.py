"""The manifest: the JSON document that makes a directory a ddcache cache.

A cache directory is ``CACHE/{data.mdb, lock.mdb, manifest.json, skipped.jsonl}``.
The manifest is written last, and the directory is renamed into place after
it, so a directory with a valid manifest is always a complete cache. It holds
what a reader needs without touching LMDB: schema version, dataset, split,
mode, categories, build options, counts, the skip summary, one checksum per
record and a small per-record index (rows, columns, cells) used by read-time
filters.
"""
import errno
import json
import math
import os
import stat
from pathlib import Path

from . import __version__
from .categories import IDS as CATEGORY_IDS
from .errors import UserError
from .regular_file import open_regular
from .schema import (INT32_MAX, MAX_MANIFEST_BYTES, SchemaError, require_fields, require_int, require_int_list,
                     require_list, require_map, require_str)

FORMAT = "ddcache"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SKIP_REPORT_NAME = "skipped.jsonl"
REQUIRED = ("format", "schema_version", "dataset", "split", "mode", "categories", "counts", "checksums", "index")
MODES = ("table", "page")
INDEX_COLUMNS = ("num_rows", "num_cols", "num_cells")
CHECKSUM_CHARS = 32  # codec.checksum: blake2b-128 in hex
_COUNTS = ("num_read", "num_tables_written", "num_skipped", "dropped_boxes", "bytes")


def record_key(index):
    """LMDB key of the ``index``-th record of a cache (zero-padded so keys sort in build order)."""
    return f"{index:08d}"


def new_manifest(dataset, split, mode, categories, options, shard):
    """A manifest skeleton; counts, checksums and index are filled in when the build finishes."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "dataset": dataset,
        "split": split,
        "mode": mode,
        "categories": dict(categories),
        "build_options": dict(options),
        "shard": list(shard) if shard else None,
        "counts": {},
        "checksums": [],
        "index": {"num_rows": [], "num_cols": [], "num_cells": []},
    }


def append_record(manifest, digest, num_rows, num_cols, num_cells):
    """Register the next record (in key order): its checksum and its index entries (the read-time filters)."""
    manifest["checksums"].append(digest)
    manifest["index"]["num_rows"].append(int(num_rows))
    manifest["index"]["num_cols"].append(int(num_cols))
    manifest["index"]["num_cells"].append(int(num_cells))


def write_manifest(cache_dir, manifest):
    """Write ``manifest.json`` durably (temp file + fsync + rename)."""
    path = Path(cache_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, separators=(",", ":"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(cache_dir):
    """Load and check a cache's manifest (:func:`check_manifest`); UserError with one line if it is not a usable cache.

    The directory must be a directory, ``manifest.json`` a regular file of at
    most ``schema.MAX_MANIFEST_BYTES`` (a FIFO is refused, not waited on), its
    JSON strict (no NaN / Infinity) and its content valid.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST_NAME
    try:
        is_dir = stat.S_ISDIR(os.stat(cache_dir).st_mode)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise UserError(f"{cache_dir}: no such cache directory") from None
        raise UserError(f"{cache_dir}: cannot open ({exc.strerror or exc})") from None
    if not is_dir:
        raise UserError(f"{cache_dir}: not a directory (a cache is a directory with {MANIFEST_NAME})")
    try:
        with open_regular(path, max_bytes=MAX_MANIFEST_BYTES) as f:
            text = f.read()
    except FileNotFoundError:
        partial = " (an unfinished build: re-run the build command to finish it)" if cache_dir.name.endswith(".partial") else ""
        raise UserError(f"{cache_dir}: not a ddcache cache (no {MANIFEST_NAME}){partial}") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable manifest ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{path}: unreadable manifest ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a ddcache manifest (no \"format\": \"{FORMAT}\")")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION and type(version) is int:
        raise UserError(
            f"{path}: schema version {version} is not supported by ddcache {__version__} "
            f"(expects {SCHEMA_VERSION}); rebuild the cache"
        )
    try:
        return check_manifest(manifest)
    except SchemaError as exc:
        raise UserError(f"{path}: not a valid ddcache manifest ({exc})") from None


def says_ddcache(cache_dir):
    """True if ``cache_dir/manifest.json`` is a regular file holding a JSON object with ``"format": "ddcache"``.

    What ``build --overwrite`` requires before it deletes a directory: a
    cache of any schema version or content (even one readers refuse), but
    not someone else's directory that merely uses the same file names.
    """
    try:
        with open_regular(Path(cache_dir) / MANIFEST_NAME, max_bytes=MAX_MANIFEST_BYTES) as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def check_manifest(manifest):
    """The manifest schema: ``manifest`` (parsed JSON) returned unchanged if valid, else SchemaError.

    Types and ranges of every field a reader uses; ``counts.num_samples``
    equal to the number of checksums and of every index column (so no reader
    loops over, or allocates for, a count the file does not back); optional
    fields (``counts.skipped``, ``shard``, ``encoding``, ...) checked when present.
    """
    require_map(manifest, "manifest")
    require_fields(manifest, "manifest", REQUIRED + ("build_options",))
    require_int(manifest["schema_version"], "schema_version", SCHEMA_VERSION, SCHEMA_VERSION)
    for name in ("dataset", "split"):
        require_str(manifest[name], name, 256)
    require_str(manifest["mode"], "mode", 16, choices=MODES)
    if require_map(manifest["categories"], "categories") != CATEGORY_IDS:
        raise SchemaError(f"categories differ from ddcache's fixed ids {CATEGORY_IDS}")
    counts = require_map(manifest["counts"], "counts")
    require_fields(counts, "counts", ("num_samples",))
    n = require_int(counts["num_samples"], "counts.num_samples", 0, INT32_MAX)
    for name in _COUNTS:
        if name in counts:
            require_int(counts[name], f"counts.{name}")
    for name in ("skipped", "boxes_per_category"):
        for k, v in require_map(counts.get(name, {}), f"counts.{name}", max_keys=1024).items():
            require_str(k, f"counts.{name} key", 256)
            require_int(v, f"counts.{name}.{k}")
    sums = require_list(manifest["checksums"], "checksums", length=n)
    if not all(type(d) is str and len(d) == CHECKSUM_CHARS for d in sums):
        raise SchemaError(f"checksums must be {CHECKSUM_CHARS}-character strings")
    index = require_map(manifest["index"], "index")
    require_fields(index, "index", INDEX_COLUMNS)
    for name in INDEX_COLUMNS:
        require_int_list(index[name], f"index.{name}", length=n)
    require_map(manifest["build_options"], "build_options")
    shard = manifest.get("shard")
    if shard is not None:
        i, total = require_int_list(shard, "shard", length=2)
        if not i < total:
            raise SchemaError(f"shard {shard} is not I/N with I < N")
    for name in ("encoding", "tool_version", "created", "source"):
        if manifest.get(name) is not None:
            require_str(manifest[name], name)
    return manifest


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value
