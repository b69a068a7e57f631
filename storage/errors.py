"""The errors of photo roots in object storage, each with its row of the one error table."""

from __future__ import annotations

from koclip.errors import KoclipSearchError


class StorageError(KoclipSearchError):
    """An object store could not be used (base class)."""

    exit_code = 1
    http_status = 503
    code = "storage_error"


class StorageSetupError(StorageError):
    """The root cannot be used as given: fix the setup, then run again (exit 2)."""

    exit_code = 2


class StorageExtraMissingError(StorageSetupError):
    """fsspec, or its filesystem for the URL's protocol, is not installed."""


class StorageCredentialsError(StorageSetupError):
    """The store refused the credentials (or none were found)."""

    code = "storage_credentials"


class NoSuchRootError(StorageSetupError):
    """The bucket (or container) does not exist."""

    code = "no_such_root"


class StorageUnreachableError(StorageSetupError):
    """The store did not answer (connection refused, timeouts, 5xx) after every retry."""

    code = "storage_unreachable"


class ObjectError(StorageError):
    """One object cannot be read; a per-photo failure, not a reason to stop a run."""

    exit_code = 2
    http_status = 404
    code = "object_error"


class ObjectTooLargeError(ObjectError):
    """The object is larger than the caller allows; none of it was downloaded."""

    http_status = 413
    code = "too_large"


class ObjectChangedError(ObjectError):
    """The object changed between its listing and its read (ETag or size differ)."""

    http_status = 409
    code = "object_changed"


class ObjectGoneError(ObjectError):
    """The object was removed since it was listed."""


class ObjectDeniedError(ObjectError):
    """The store refused to hand this one object over (AccessDenied on its GET) although the
    root could be listed: a per-object policy or ACL. Tried again on the next run."""

    http_status = 403
    code = "object_denied"
