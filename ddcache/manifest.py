"""The manifest: the JSON document that makes a directory a ddcache cache.

A cache directory is ``CACHE/{data.mdb, lock.mdb, manifest.json, skipped.jsonl}``.
The manifest is written last, and the directory is renamed into place after
it, so a directory with a valid manifest is always a complete cache. It holds
what a reader needs without touching LMDB: schema version, dataset, split,
mode, categories, build options, counts, the skip summary, one checksum per
record and a small per-record index (rows, columns, cells) used by read-time
filters.
"""
import json
import os
from pathlib import Path

from . import __version__
from .errors import UserError

FORMAT = "ddcache"
SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SKIP_REPORT_NAME = "skipped.jsonl"
REQUIRED = ("format", "schema_version", "dataset", "split", "mode", "categories", "counts", "checksums", "index")


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
    """Load and validate a cache's manifest; UserError with one line if it is not a usable cache."""
    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST_NAME
    if not cache_dir.is_dir():
        raise UserError(f"{cache_dir}: no such cache directory")
    if not path.is_file():
        partial = " (an unfinished build: re-run the build command to finish it)" if cache_dir.name.endswith(".partial") else ""
        raise UserError(f"{cache_dir}: not a ddcache cache (no {MANIFEST_NAME}){partial}")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc})") from None
    missing = [k for k in REQUIRED if k not in manifest]
    if manifest.get("format") != FORMAT or missing:
        raise UserError(f"{path}: not a ddcache manifest (missing {', '.join(missing) or 'format'})")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise UserError(
            f"{path}: schema version {manifest['schema_version']} is not supported by ddcache {__version__} "
            f"(expects {SCHEMA_VERSION}); rebuild the cache"
        )
    return manifest
