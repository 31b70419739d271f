"""Errors that mean 'the user asked for something impossible'.

The CLI prints them as one line and exits non-zero, with no traceback; every
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the command line or the environment (not in the data)."""


class CorruptRecordError(Exception):
    """A stored record cannot be decoded or does not match its checksum."""

    def __init__(self, key, reason=""):
        super().__init__(f"corrupt record {key!r}: {reason}")
        self.key = key
        self.reason = reason

    def __reduce__(self):
        # survive pickling between processes (tensorpack re-raises worker errors in the parent)
        return (type(self), (self.key, self.reason))


class SkipSample(Exception):
    """One annotation line cannot become a sample.

    ``reason`` is a short stable tag counted in the skip report; the build
    goes on with the next line.
    """

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
