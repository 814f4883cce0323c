"""The errors convac raises for a user's mistake, as opposed to its own bugs.

Every check of a setting, an input, a file or a checkpoint raises a :class:`UserError`: the
message says what was expected and what was found. The command-line tools report a
:class:`UserError` in one line (``convac-train: error: ...``, exit status 1); any other exception
is a bug (of convac or of a library under it) and keeps its traceback. Each concrete class is
also the built-in exception Python users catch for that kind of mistake, so ``except
ValueError`` and ``except FileNotFoundError`` keep working.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can see and fix: a bad setting, input, data file or checkpoint."""


class InvalidValueError(UserError, ValueError):
    """A setting, an input tensor, a file's contents or a checkpoint that is not what convac
    expects (a wrong shape, a value out of range, an unknown name, another architecture)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (or holds none of what was expected)."""
