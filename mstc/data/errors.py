"""Errors raised by :mod:`mstc.data`."""

from __future__ import annotations

from mstc.errors import MSTCError


class DataError(MSTCError, ValueError):
    """A data set file is malformed, truncated, of the wrong shape, or fails its checksum."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A data set is not where it was looked for; the message says how to get it."""


class UnsafePickleError(DataError):
    """A pickle refers to a global outside the small allow-list; it was refused, never run."""
