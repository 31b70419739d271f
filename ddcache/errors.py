"""Errors with a one-line meaning: user mistakes, bad data, a broken pipeline.

The CLI prints each as one line and exits non-zero, with no traceback
(UserError and CorruptRecordError: exit 2, WorkerDiedError: exit 1); every
other exception is a bug and keeps its traceback. Readers raise only these
for anything a cache or raw dataset can contain (see ``schema``), so callers
(``ddtrain``, the dataflows) can catch them by type.
"""


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
