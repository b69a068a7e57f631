"""The exceptions `koclip` raises; callers turn them into messages."""


class KoCLIPError(Exception):
    """Base class for every error this package raises on purpose."""


class CheckpointError(KoCLIPError):
    """A checkpoint cannot be found, read, or does not fit the model."""


class ImageError(KoCLIPError):
    """An image cannot be decoded; the message is the reason, fit for a user."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than the caller allowed; it was not decoded."""
