"""A cache directory on disk while it is built: who may write it, how it replaces an old one, what a kill leaves.

* **One build per ``--out``**: an exclusive ``flock`` on ``OUT.lock``, taken
  before anything is created or deleted and held until the build ends (then
  the file is removed). A second build to the same ``--out`` is refused with
  one line. After a SIGKILL the kernel drops the lock; the stale file is
  simply locked again by the next build.
* **``--overwrite`` deletes only what ddcache made**: a directory holding
  nothing but cache files (:data:`CACHE_FILES`) and a manifest that says
  ``"format": "ddcache"`` (another program's LMDB directory holds the same
  ``data.mdb`` + ``lock.mdb``), or a ``.partial`` of one. Anything else is a
  one-line error.
* **Replacing a cache never leaves a gap or a stray copy**: the finished
  ``OUT.partial`` and the old ``OUT`` are swapped in one step
  (``renameat2(RENAME_EXCHANGE)``), so at every instant ``OUT`` is a complete
  cache, old or new. The old one, now at ``OUT.partial``, carries a marker
  (:data:`REPLACED`) written into it before the swap and deleted last, so a
  kill while it is being deleted leaves a directory the next build to
  ``OUT`` recognises as garbage and removes, never one it would resume or
  publish. No ``OUT.old`` exists at any point. (Filesystems without
  ``RENAME_EXCHANGE`` fall back to two renames through ``OUT.replaced``,
  cleaned up the same way.)
"""
import ctypes
import errno
import fcntl
import os
import stat
from pathlib import Path

import lmdb

from .errors import UserError
from .manifest import MANIFEST_NAME, SKIP_REPORT_NAME, says_ddcache
from .outputs import check_output, owned_by_us

REPLACED = ".replaced-by-ddcache"
CACHE_FILES = ("data.mdb", "lock.mdb", MANIFEST_NAME, SKIP_REPORT_NAME, MANIFEST_NAME + ".tmp", SKIP_REPORT_NAME + ".tmp",
               REPLACED)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LOW_SPACE_BYTES = 64 << 20  # below this, an LMDB short write (EIO) means the disk is full


def partial_dir(out):
    """Where the cache ``out`` is written before it is published."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _trash_dir(out):
    out = Path(out)
    return out.with_name(out.name + ".replaced")


class BuildLock:
    """Exclusive lock on ``OUT.lock`` for the life of one build (a context manager); UserError if another build holds it.

    ``activity`` / ``option`` name the writer and its flag in the messages (``ddtrain train`` locks ``--logdir``
    with it: one training run per log dir).
    """

    def __init__(self, out, activity="build", option="--out"):
        self.out = Path(out)
        self.path = self.out.with_name(self.out.name + ".lock")
        self.fd = None
        self.activity, self.option = activity, option

    def __enter__(self):
        while True:
            try:  # O_NOFOLLOW: never truncate a file a symlink named OUT.lock points to
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.EISDIR):
                    raise
                raise UserError(f"{self.path} is not a ddcache lock file (a symlink or a directory); remove it or "
                                f"choose another {self.option}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                os.close(fd)
                raise UserError(f"another {self.activity} is writing {self.out} (process {holder or '?'} holds "
                                f"{self.path}); wait for it to finish or stop it") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else: the holder removed the file as we waited for it; lock the new one
                break
            os.close(fd)
        if not _is_lock_file(fd):
            os.close(fd)
            raise UserError(f"{self.path} is not a ddcache lock file (it holds other data); remove it or choose "
                            f"another {self.option}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        # Unlink while still holding the lock: a build that opened this file meanwhile sees it is gone and retries.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def _is_lock_file(fd):
    """True if the open file ``fd`` is a regular file that is empty or holds what BuildLock writes (a pid line):
    a file of the user's that happens to be named OUT.lock is neither truncated nor deleted."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > 32:
        return False
    text = os.pread(fd, 32, 0)
    return text.strip() == b"" or text.strip().isdigit()


def prepare(out, overwrite):
    """Before a build writes ``out`` (call with the :class:`BuildLock` held).

    Removes garbage left by a killed publish (a directory marked
    :data:`REPLACED`), then raises UserError if ``out`` exists and may not be
    replaced (:func:`outputs.check_output`: only a directory of cache files,
    and only with ``overwrite``), or if ``OUT.partial`` holds files that are
    not a cache's (it would be resumed into or deleted).
    """
    for garbage in (partial_dir(out), _trash_dir(out)):
        if (garbage / REPLACED).exists() and owned_by_us(garbage, CACHE_FILES):
            remove_cache_dir(garbage)
    check_output(out, "--out", overwrite=bool(overwrite), owned=(CACHE_FILES, "a ddcache cache", says_ddcache))
    partial = partial_dir(out)
    if (partial.exists() or partial.is_symlink()) and not owned_by_us(partial, CACHE_FILES):
        raise UserError(f"{partial} is not an unfinished ddcache build (it holds other files); remove it or choose "
                        "another --out")


def remove_cache_dir(path):
    """Delete a cache directory (flat: files only), the :data:`REPLACED` marker last, then the directory."""
    path = Path(path)
    for name in os.listdir(path):
        if name != REPLACED:
            os.unlink(path / name)
    try:
        os.unlink(path / REPLACED)
    except FileNotFoundError:
        pass
    os.rmdir(path)


def publish(partial, out):
    """Move the finished cache ``partial`` to ``out``, replacing an old cache there atomically (see module doc)."""
    partial, out = Path(partial), Path(out)
    if not (out.exists() or out.is_symlink()):
        os.rename(partial, out)
        return
    _mark(out)
    if _exchange(partial, out):
        remove_cache_dir(partial)  # the old cache, marked
        return
    trash = _trash_dir(out)
    os.rename(out, trash)
    os.rename(partial, out)
    remove_cache_dir(trash)


def _mark(cache):
    """Put the :data:`REPLACED` marker into ``cache`` (durably: it must exist before the swap does)."""
    fd = os.open(Path(cache) / REPLACED, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a, b):
    """Swap two directory entries atomically; False when the kernel or filesystem cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def write_failure(exc, partial):
    """A one-line UserError for a build's write failure ``exc`` that the user can fix, or None (a bug: re-raise).

    ENOSPC anywhere, and LMDB's "Input/output error" when the filesystem is
    (nearly) full: LMDB reports a short write, which is how a full disk shows
    up in ``mdb_txn_commit``, as EIO; LMDB's MemoryError (its map does not
    fit an address-space limit). Committed batches stay valid, so the
    message says to re-run: the build resumes from the last commit.
    """
    text = str(exc)
    no_space = (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in text
    if not no_space and isinstance(exc, lmdb.Error) and "Input/output error" in text:
        no_space = _free_bytes(partial) < _LOW_SPACE_BYTES
        if not no_space:
            return UserError(f"I/O error while writing {partial} ({text}); check the disk, then re-run to resume")
    if no_space:
        return UserError(f"no space left on device while writing {partial}; free space and re-run to resume")
    if isinstance(exc, lmdb.MemoryError):  # mmap refused: an address-space limit (ulimit -v) below LMDB's map size
        return UserError(f"cannot map {partial} into memory ({text}); LMDB maps 1 GiB or more of address space: "
                         "raise the limit (ulimit -v), then re-run to resume")
    return None


def _free_bytes(path):
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize
