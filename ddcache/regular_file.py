"""Open only regular files: a FIFO, socket or device where a file is expected is refused, never waited on.

``open()`` on a FIFO blocks until a writer appears, and a device can yield
endless bytes; either hangs a reader that meant to read a cache file or an
image. Opening with ``O_NONBLOCK`` and checking ``fstat`` on the opened
descriptor decides on the object actually opened (no check-then-open race).
"""
import os
import stat


class NotRegularFileError(OSError):
    """The path exists but is not a regular file (a FIFO, socket, device or directory)."""


def open_regular(path, max_bytes=None):
    """A binary read-only file object for ``path``; NotRegularFileError unless it is a regular file.

    ``max_bytes``: also refuse a file larger than this (NotRegularFileError
    naming the size), before anything is read. Other OSErrors (missing,
    permission, symlink loop) propagate.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{path}: not a regular file ({_kind(st.st_mode)})")
        if max_bytes is not None and st.st_size > max_bytes:
            raise NotRegularFileError(f"{path}: {st.st_size} bytes, more than the limit of {max_bytes}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_regular(path):
    """True if ``path`` is a regular file (following symlinks); False for anything else, missing or unreadable."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _kind(mode):
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "a special file"
