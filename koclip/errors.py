"""The product's error hierarchy, rooted here because `koclip` is the lowest layer.

Each class says how it is reported, so the CLI and the web read one table:
`exit_code` (2: an argument or the library cannot be used as given; 1: the work failed),
`http_status`, and `code`, a stable key the web page maps to Korean/English text.
Subclasses inherit their parent's row unless they override it.
"""

from __future__ import annotations


class KoclipSearchError(Exception):
    """Base class for every error the product raises on purpose."""

    exit_code = 1
    http_status = 500
    code = "internal"


class KoCLIPError(KoclipSearchError):
    """Base class for every error this package raises on purpose (a model or checkpoint failure)."""

    http_status = 503
    code = "model_error"


class PrecisionError(KoCLIPError):
    """The precision asked for cannot be used here (not a precision at all, runtime or CPU
    support missing, or the tower misses fp32)."""

    exit_code = 2
    http_status = 400
    code = "precision_unavailable"


class CheckpointError(KoCLIPError):
    """A checkpoint cannot be found, read, or does not fit the model."""


class ModelUnavailableError(CheckpointError):
    """A named model's weights are not cached and cannot be downloaded now (no network, or
    HF_HUB_OFFLINE). `local_hint` says how to use a local checkpoint instead; a front end
    that has its own way (a command-line flag) gives its words through `with_hint`."""

    def __init__(self, reason: str, local_hint: str = "pass a local checkpoint directory") -> None:
        self.reason = reason
        super().__init__(f"{reason}; download them once with network access, or {local_hint}")

    def with_hint(self, local_hint: str) -> ModelUnavailableError:
        """The same error, advising `local_hint` for a local checkpoint."""
        return type(self)(self.reason, local_hint)


class ImageError(KoCLIPError):
    """An image cannot be decoded; the message is the reason, fit for a user."""

    exit_code = 2
    http_status = 400
    code = "bad_image"


class ImageTooLargeError(ImageError):
    """An image has more pixels than the caller allowed; it was not decoded."""


def os_reason(exc: OSError) -> str:
    """An OS error's reason as a user reads it: its strerror ("No space left on device", no
    errno or path), else its text."""
    return exc.strerror or str(exc)
