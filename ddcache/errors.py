"""Errors with a one-line meaning: user mistakes, bad data, a broken pipeline.

The CLI prints each as one line and exits non-zero, with no traceback
(UserError and CorruptRecordError: exit 2, WorkerDiedError: exit 1); so is
an OSError the environment causes (:func:`environment_error`: a full disk, a
permission, a name too long); every other exception is a bug and keeps its
traceback. Readers raise only these for anything a cache or raw dataset can
contain (see ``schema``), so callers (``ddtrain``, the dataflows) can catch
them by type.
"""
import errno
import os

# errno values that describe the machine or the paths given (fixable by the user), not a bug in ddcache
ENVIRONMENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG,
    errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO, errno.ENXIO,
})


class UserError(Exception):
    """A mistake in the command line or the environment, or a directory that is not a usable cache.

    Raised for every problem of a cache as a whole (its manifest, its
    ``data.mdb`` file); a problem of one record is a CorruptRecordError.
    """


class CorruptRecordError(Exception):
    """A stored record cannot be decoded or does not match its checksum."""

    def __init__(self, key, reason=""):
        super().__init__(f"corrupt record {key!r}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self):
        # survive pickling between processes (tensorpack re-raises worker errors in the parent)
        return (type(self), (self.key, self.reason))


class WorkerDiedError(RuntimeError):
    """A worker process of a data pipeline ended without delivering its work (killed, out of memory)."""


class SkipSample(Exception):
    """One annotation line cannot become a sample.

    ``reason`` is a short stable tag counted in the skip report; the build
    goes on with the next line.
    """

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def environment_error(exc):
    """A one-line UserError for an OSError the environment caused (:data:`ENVIRONMENT_ERRNOS`), else None.

    Writing an output to a full disk, reading a file without permission or
    naming a path longer than the filesystem allows ends with
    ``PATH: No space left on device`` instead of a traceback; the command
    that knows more (``ddcache build``: "re-run to resume") says so itself.
    """
    if not isinstance(exc, OSError) or exc.errno not in ENVIRONMENT_ERRNOS:
        return None
    where = exc.filename if exc.filename is not None else ""
    if isinstance(where, bytes):
        where = os.fsdecode(where)
    where = str(where)
    if len(where) > 200:
        where = where[:100] + "..." + where[-60:]
    return UserError(f"{where}: {exc.strerror or os.strerror(exc.errno)}" if where else (exc.strerror or str(exc)))
