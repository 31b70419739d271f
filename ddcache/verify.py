"""`ddcache verify`: decode every record and image and check every checksum against the manifest."""
from pathlib import Path

import lmdb
from tqdm import tqdm

from .codec import checksum, decode_record
from .errors import CorruptRecordError, UserError
from .manifest import read_manifest, record_key
from .store import open_readonly, read_value


def verify_cache(path, progress=False):
    """Return a list of (key, problem) for ``path``; empty when the cache is sound."""
    manifest = read_manifest(path)
    n = manifest["counts"]["num_samples"]
    sums = manifest["checksums"]
    problems = []
    if len(sums) != n:
        problems.append(("manifest", f"{len(sums)} checksums for {n} samples"))
    try:
        resolved = str(Path(path).resolve())
        open_readonly(resolved)  # a truncated data.mdb is reported before any page is touched
    except UserError as exc:
        return problems + [("data.mdb", str(exc))]
    for i in tqdm(range(n), desc=f"verify {path}", unit="rec", disable=not progress):
        key = record_key(i)
        try:
            raw = read_value(resolved, key.encode())
        except lmdb.Error as exc:  # a damaged B-tree page
            problems.append((key, f"lmdb: {exc}"))
            continue
        if raw is None:
            problems.append((key, "missing"))
            continue
        if i < len(sums) and checksum(raw) != sums[i]:
            problems.append((key, "checksum mismatch"))
            continue
        try:
            decode_record(key, raw, with_image=True)
        except CorruptRecordError as exc:
            problems.append((key, exc.reason))
    if read_value(resolved, record_key(n).encode()) is not None:
        problems.append((record_key(n), "record beyond num_samples"))
    return problems
