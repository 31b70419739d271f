"""A structural check of an LMDB data file (``data.mdb``), in Python, before LMDB itself reads it.

LMDB trusts its file. A damaged branch page makes it fail an assertion
(SIGABRT) or follow a node past the end of the file (SIGBUS): no exception
handler catches either, so one flipped bit in a cache from someone else
would kill every process that reads it. This module reads the two meta
pages exactly as LMDB picks between them, then walks every branch and leaf
page of the main B-tree and checks what LMDB's read path relies on without
checking: page header and flags, node offsets and sizes inside the page,
child and overflow page numbers inside the file, at least two keys per
branch page, leaves at the tree's depth, no page reached twice, no
sub-databases or duplicate-key nodes. Overflow pages (the record bytes) are
not read: checksums and the record schema cover their content, and only
their extent matters for memory safety.

Cost: one read of each branch / leaf page, i.e. one 4 KB page per ~150
records stored in overflow pages: 10 ms for 10K records of 30-40 KB here,
done once per file per process (``store`` remembers it across forks). This
is why it is not py-lmdb's offline verifier (``lmdb.verify``, py-lmdb >= 3):
that one also reads the first page of every overflow value and walks every
page number of the file (freeDB coverage), 77 ms for the same file and
proportional to the file's size rather than to its number of leaf pages.

Layout facts (LMDB 0.9 ``mdb.c``, 64-bit little-endian): page header
``pgno u64, pad u16, flags u16, lower u16, upper u16``; meta after the header:
``magic u32, version u32, address u64, mapsize u64, dbs[2] (48 bytes each:
pad u32 (the free DB's pad is the page size), flags u16, depth u16,
branch/leaf/overflow pages u64, entries u64, root u64), last_pgno u64,
txnid u64``; node ``lo u16, hi u16, flags u16, ksize u16, key, data``; a
branch node's child is ``lo | hi << 16 | flags << 32``, a leaf node's data
size is ``lo | hi << 16``.
"""
import os
import struct

import numpy as np

from .regular_file import open_regular

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGE_HEADER = 16
P_BRANCH, P_LEAF, P_OVERFLOW, P_META = 0x01, 0x02, 0x04, 0x08
_KIND_BITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40  # branch, leaf, overflow, meta, leaf2, sub-page
F_BIGDATA = 0x01
P_INVALID = (1 << 64) - 1
MAX_DEPTH = 32  # LMDB's cursor stack
MAX_KEY = 511


class DamagedFileError(ValueError):
    """The file is not an LMDB environment LMDB could read safely."""


def check_data_file(path):
    """Check ``path`` (a ``data.mdb``); return ``{"psize", "last_pgno", "entries", "depth", "size"}``.

    Raises DamagedFileError naming the first problem, NotRegularFileError
    for a FIFO / device, OSError if it cannot be read.
    """
    with open_regular(path) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        meta = _pick_meta(fd, size)
        psize, last = meta["psize"], meta["last_pgno"]
        if (last + 1) * psize > size:
            raise DamagedFileError(f"data.mdb is truncated ({size} bytes, LMDB needs {(last + 1) * psize})")
        db = meta["main"]
        if db["flags"] != 0:
            raise DamagedFileError(f"main database has flags {db['flags']:#x} (ddcache writes none)")
        if db["root"] == P_INVALID:
            if db["entries"] != 0:
                raise DamagedFileError(f"empty tree claims {db['entries']} entries")
        else:
            entries = _walk(fd, psize, last, db["root"], db["depth"])
            if entries != db["entries"]:
                raise DamagedFileError(f"tree holds {entries} entries, the meta page says {db['entries']}")
    return {"psize": psize, "last_pgno": last, "entries": db["entries"], "depth": db["depth"], "size": size}


def _read(fd, offset, n):
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise DamagedFileError(f"short read at byte {offset}")
    return data


def _parse_meta(page, index):
    pgno, _, flags = struct.unpack_from("<QHH", page, 0)
    if not flags & P_META:
        raise DamagedFileError(f"meta page {index} is not a meta page (flags {flags:#x})")
    magic, version = struct.unpack_from("<II", page, PAGE_HEADER)
    if magic != MAGIC or version != DATA_VERSION:
        raise DamagedFileError(f"meta page {index}: not an LMDB file (magic {magic:#x}, version {version})")
    dbs = []
    for i in range(2):
        pad, dflags, depth, branch, leaf, overflow, entries, root = struct.unpack_from("<IHHQQQQQ", page, 40 + 48 * i)
        dbs.append({"pad": pad, "flags": dflags, "depth": depth, "entries": entries, "root": root})
    last, txnid = struct.unpack_from("<QQ", page, 136)
    return {"psize": dbs[0]["pad"], "main": dbs[1], "last_pgno": last, "txnid": txnid}


def _pick_meta(fd, size):
    """The meta LMDB uses: both must be valid (LMDB refuses the file otherwise); the higher txnid wins, ties go to page 0."""
    if size < 2 * 512:
        raise DamagedFileError(f"data.mdb has {size} bytes: too short for two meta pages")
    first = _parse_meta(_read(fd, 0, 512), 0)
    psize = first["psize"]
    if psize < 512 or psize > 65536 or psize & (psize - 1):
        raise DamagedFileError(f"page size {psize} is not a power of two in [512, 65536]")
    second = _parse_meta(_read(fd, psize, 512), 1)
    if second["psize"] != psize:
        raise DamagedFileError(f"the meta pages disagree on the page size ({psize} vs {second['psize']})")
    meta = second if first["txnid"] < second["txnid"] else first
    if meta["last_pgno"] < 1 or meta["main"]["depth"] > MAX_DEPTH:
        raise DamagedFileError(f"meta page: last page {meta['last_pgno']}, depth {meta['main']['depth']}")
    meta["psize"] = psize
    return meta


def _walk(fd, psize, last, root, depth):
    """Visit every branch / leaf page from ``root``; return the number of leaf entries."""
    if depth < 1:
        raise DamagedFileError(f"tree depth {depth} with a root page")
    seen, stack, entries = set(), [(root, 1)], 0
    while stack:
        pgno, level = stack.pop()
        if not 2 <= pgno <= last:
            raise DamagedFileError(f"page number {pgno} outside the file (last page {last})")
        if pgno in seen:
            raise DamagedFileError(f"page {pgno} is reached twice")
        seen.add(pgno)
        page = _read(fd, pgno * psize, psize)
        kind, ptrs = _page_nodes(page, pgno, psize)
        if kind == P_BRANCH:
            if level >= depth:
                raise DamagedFileError(f"branch page {pgno} at depth {level} of a tree of depth {depth}")
            if len(ptrs) < 2:
                raise DamagedFileError(f"branch page {pgno} has {len(ptrs)} key(s) (at least 2)")
            lo, hi, flags, _ = _node_fields(page, ptrs)
            children = lo | (hi << 16) | (flags << 32)
            stack.extend((int(c), level + 1) for c in children[::-1])
        else:
            if level != depth:
                raise DamagedFileError(f"leaf page {pgno} at depth {level} of a tree of depth {depth}")
            if len(ptrs) < 1:
                raise DamagedFileError(f"leaf page {pgno} is empty")
            _check_leaf(page, pgno, ptrs, psize, last)
            entries += len(ptrs)
    return entries


def _page_nodes(page, pgno, psize):
    """(kind, node offsets) of a branch / leaf page, with header and offsets checked."""
    stored, _, flags, lower, upper = struct.unpack_from("<QHHHH", page, 0)
    if stored != pgno:
        raise DamagedFileError(f"page {pgno} says it is page {stored}")
    kind = flags & _KIND_BITS
    if kind not in (P_BRANCH, P_LEAF):
        raise DamagedFileError(f"page {pgno} has flags {flags:#x}, expected a branch or leaf page")
    if not (PAGE_HEADER <= lower <= upper <= psize) or (lower - PAGE_HEADER) % 2:
        raise DamagedFileError(f"page {pgno}: free space bounds {lower}..{upper} are impossible")
    ptrs = np.frombuffer(page, "<u2", count=(lower - PAGE_HEADER) // 2, offset=PAGE_HEADER).astype(np.int64)
    if len(ptrs) and ((ptrs < upper).any() or (ptrs + 8 > psize).any() or (ptrs % 2).any()):
        raise DamagedFileError(f"page {pgno}: a node offset points outside its node area")
    return kind, ptrs


def _node_fields(page, ptrs):
    """(lo, hi, flags, ksize) int64 arrays of the nodes at ``ptrs`` (2-byte aligned offsets)."""
    words = np.frombuffer(page, "<u2").astype(np.int64)
    at = ptrs // 2
    return words[at], words[at + 1], words[at + 2], words[at + 3]


def _check_leaf(page, pgno, ptrs, psize, last):
    lo, hi, flags, ksize = _node_fields(page, ptrs)
    if (ksize > MAX_KEY).any() or (ptrs + 8 + ksize > psize).any():
        raise DamagedFileError(f"leaf page {pgno}: a key runs past the page")
    if ((flags != 0) & (flags != F_BIGDATA)).any():
        raise DamagedFileError(f"leaf page {pgno}: a node has flags {int(flags[(flags != 0) & (flags != F_BIGDATA)][0]):#x} "
                               "(sub-databases / duplicate keys are not part of a ddcache file)")
    dsize = lo | (hi << 16)
    data_at = ptrs + 8 + ksize
    inline = flags == 0
    if (data_at[inline] + dsize[inline] > psize).any():
        raise DamagedFileError(f"leaf page {pgno}: a value runs past the page")
    big = ~inline
    if big.any():
        if (data_at[big] + 8 > psize).any():
            raise DamagedFileError(f"leaf page {pgno}: an overflow reference runs past the page")
        raw = np.frombuffer(page, np.uint8)
        starts = data_at[big]
        first = np.zeros(len(starts), dtype=np.uint64)
        for b in range(8):  # little-endian u64 at unaligned offsets
            first |= raw[starts + b].astype(np.uint64) << np.uint64(8 * b)
        pages = (dsize[big] + PAGE_HEADER + psize - 1) // psize
        if (first < 2).any() or (first > np.uint64(last)).any() or (first.astype(np.int64) + pages - 1 > last).any():
            raise DamagedFileError(f"leaf page {pgno}: a value's overflow pages lie outside the file")
