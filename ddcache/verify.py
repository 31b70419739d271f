"""`ddcache verify`: check every record's bytes (checksum) and content (schema, image, index) against the manifest.

A checksum only proves the bytes are the ones the manifest lists; whoever
wrote the manifest could have hashed a hostile record. So every record is
also decoded through the record schema (``codec.check_payload``: types,
ranges, finite boxes, known categories, image header vs shape) with its image,
and compared with the manifest's index entries that read-time filters use.
"""
import os

from tqdm import tqdm

from . import categories as C
from .codec import checksum, decode_record
from .errors import CorruptRecordError, UserError
from .manifest import read_manifest, record_key
from .store import open_readonly, read_value


def verify_cache(path, progress=False):
    """Return a list of (key, problem) for ``path``; empty when the cache is sound.

    Raises UserError (one line) when ``path`` is not a readable cache at all
    (no or invalid manifest); a damaged ``data.mdb`` is reported as a problem.
    """
    manifest = read_manifest(path)
    n = manifest["counts"]["num_samples"]
    sums = manifest["checksums"]
    index = manifest["index"]
    problems = []
    resolved = os.path.realpath(path)
    try:
        open_readonly(resolved)  # structure and size of data.mdb are checked before any page is touched
    except UserError as exc:
        return [("data.mdb", str(exc))]
    for i in tqdm(range(n), desc=f"verify {path}", unit="rec", disable=not progress):
        key = record_key(i)
        try:
            raw = read_value(resolved, key.encode())
        except CorruptRecordError as exc:  # a damaged page, or a value over the size limit
            problems.append((key, exc.reason))
            continue
        if raw is None:
            problems.append((key, "missing"))
            continue
        if checksum(raw) != sums[i]:
            problems.append((key, "checksum mismatch"))
            continue
        try:
            sample = decode_record(key, raw, with_image=True)
        except CorruptRecordError as exc:
            problems.append((key, exc.reason))
            continue
        stored = (sample["num_rows"], sample["num_cols"], int((sample["category_ids"] == C.CELL).sum()))
        listed = (index["num_rows"][i], index["num_cols"][i], index["num_cells"][i])
        if stored != listed:
            problems.append((key, f"manifest index (rows, cols, cells) {listed} differs from the record's {stored}"))
    try:
        if read_value(resolved, record_key(n).encode()) is not None:
            problems.append((record_key(n), "record beyond num_samples"))
    except CorruptRecordError as exc:
        problems.append((record_key(n), exc.reason))
    return problems
