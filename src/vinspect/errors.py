"""Exceptions of vinspect.  The CLI maps them to exit codes: bad input -> 2, anything else -> 1."""


class VinspectError(Exception):
    """Base class of the errors vinspect raises on purpose."""


class BadInputError(VinspectError):
    """The user's input (path, option, data, configuration) cannot be used; nothing was computed."""


class ImageDecodeError(BadInputError):
    """One file could not be decoded as an image."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class WeightsUnavailableError(BadInputError):
    """A backbone's weights are not available on this machine (never downloaded at run time)."""
