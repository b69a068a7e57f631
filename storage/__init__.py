"""Photo roots in object storage (issue 26): `s3://bucket/prefix` through fsspec/s3fs.

Imports only koclip's light modules; the indexer (and the web) build on it. s3fs is imported
when an s3:// root is opened (the `s3` extra: pip install 'koclip-search[s3]').
"""

from storage.errors import (
    NoSuchRootError,
    ObjectChangedError,
    ObjectDeniedError,
    ObjectError,
    ObjectGoneError,
    ObjectTooLargeError,
    StorageCredentialsError,
    StorageError,
    StorageExtraMissingError,
    StorageSetupError,
    StorageUnreachableError,
)
from storage.paths import ObjectPath
from storage.roots import (
    DEFAULT_WORKERS,
    ObjectEntry,
    ObjectRoot,
    Retry,
    is_url,
    open_root,
)

__all__ = [
    "DEFAULT_WORKERS",
    "NoSuchRootError",
    "ObjectChangedError",
    "ObjectDeniedError",
    "ObjectEntry",
    "ObjectError",
    "ObjectGoneError",
    "ObjectPath",
    "ObjectRoot",
    "ObjectTooLargeError",
    "Retry",
    "StorageCredentialsError",
    "StorageError",
    "StorageExtraMissingError",
    "StorageSetupError",
    "StorageUnreachableError",
    "is_url",
    "open_root",
]
