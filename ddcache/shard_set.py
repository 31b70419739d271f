"""A shard set: one directory holding the N shard caches of one build, addressed as one dataset.

``ddcache build ... --dask ... --shards N --out OUT`` writes
``OUT/shard-0-of-N``, ..., ``OUT/shard-<N-1>-of-N`` (indices zero-padded to
the width of N-1, so names sort in shard order); building the shards by hand
with ``--shard I/N --out OUT/shard-I-of-N`` makes the same set. Every reader
(dataflows, ``info``, ``verify``, ``show``, ``export``, ``bench``, ``ddtrain``)
accepts ``OUT`` in place of the list of its shard caches: :func:`expand`
replaces it by the shard directories in shard order.

A set is read only when it is complete: all N shards finished (each has its
manifest). A missing shard or one still being built is a one-line error,
never a silently smaller dataset.
"""
import os
import re
from pathlib import Path

from .errors import UserError
from .manifest import MANIFEST_NAME

_NAME = re.compile(r"^shard-(\d+)-of-(\d+)(\.partial)?$")


def shard_dir_name(index, count):
    """``shard-I-of-N`` with I zero-padded to the width of N-1 (e.g. ``shard-03-of-16``)."""
    width = len(str(max(0, int(count) - 1)))
    return f"shard-{int(index):0{width}d}-of-{int(count)}"


def shard_entries(parent):
    """``[(index, count, path, finished)]`` for the shard directories in ``parent`` (finished or ``.partial``)."""
    entries = []
    for child in sorted(Path(parent).iterdir()) if Path(parent).is_dir() else []:
        match = _NAME.match(child.name)
        if match and child.is_dir():
            finished = match.group(3) is None and (child / MANIFEST_NAME).is_file()
            entries.append((int(match.group(1)), int(match.group(2)), child, finished))
    return entries


def is_shard_set(path):
    """True if ``path`` is a directory without its own manifest that holds shard directories."""
    path = Path(path)
    return path.is_dir() and not (path / MANIFEST_NAME).is_file() and bool(shard_entries(path))


def members(parent):
    """The finished shard caches of the complete set in ``parent``, in shard order; UserError otherwise."""
    entries = shard_entries(parent)
    counts = sorted({count for _, count, _, _ in entries})
    if len(counts) != 1:
        raise UserError(f"{parent}: holds shards of builds with different shard counts ({', '.join(map(str, counts))})")
    count = counts[0]
    done = {index: path for index, _, path, finished in entries if finished}
    missing = [i for i in range(count) if i not in done]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise UserError(f"{parent}: unfinished shard set: shard(s) {shown} of {count} not built yet "
                        "(re-run the build command to finish it)")
    return [done[i] for i in range(count)]


def expand(paths):
    """Cache paths with every shard-set directory replaced by its shard caches (other paths unchanged)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        out.extend(members(p) if is_shard_set(p) else [Path(p)])
    return out
