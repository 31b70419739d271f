"""Errors that mean 'the user asked for something impossible'.

The CLI prints them as one line and exits non-zero, with no traceback; every
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the command line or the environment (not in the data)."""


class CorruptRecordError(Exception):
    """A stored record cannot be decoded or does not match its checksum."""

    def __init__(self, key, reason):
        super().__init__(f"corrupt record {key!r}: {reason}")
        self.key = key
        self.reason = reason
