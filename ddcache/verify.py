"""`ddcache verify`: decode every record and image and check every checksum against the manifest."""
import lmdb
from tqdm import tqdm

from .codec import checksum, decode_record
from .errors import CorruptRecordError, UserError
from .manifest import read_manifest, record_key
from .store import open_readonly


def verify_cache(path, progress=False):
    """Return a list of (key, problem) for ``path``; empty when the cache is sound."""
    manifest = read_manifest(path)
    n = manifest["counts"]["num_samples"]
    sums = manifest["checksums"]
    problems = []
    if len(sums) != n:
        problems.append(("manifest", f"{len(sums)} checksums for {n} samples"))
    try:
        env = open_readonly(path)
    except UserError as exc:
        return problems + [("data.mdb", str(exc))]
    with env.begin() as txn:
        for i in tqdm(range(n), desc=f"verify {path}", unit="rec", disable=not progress):
            key = record_key(i)
            try:
                raw = txn.get(key.encode())
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
        extra = txn.get(record_key(n).encode())
        if extra is not None:
            problems.append((record_key(n), "record beyond num_samples"))
    return problems
