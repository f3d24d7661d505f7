"""mstc's exception classes."""


class MSTCError(Exception):
    """Base class of every error mstc raises on purpose."""


class FormatError(MSTCError, ValueError):
    """A compressed (.mstc) file or checkpoint is malformed, corrupted or of an unknown version."""


class UnsupportedModelError(MSTCError, ValueError):
    """A model contains an operation that mstc cannot compress or run."""
