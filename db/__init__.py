"""The library on disk: SQLite schema and sessions, manifest, writer lock, FAISS wrapper.

Knows nothing of the model; each module's docstring describes its part.
"""

from db.content import IMAGE_SUFFIXES, content_hash, hash_file, path_key
from db.errors import (
    LibraryCorruptError,
    LibraryError,
    LibraryLockedError,
    LibraryNotFoundError,
    LibraryWriteError,
    ManifestMismatchError,
    SchemaVersionError,
)
from db.library import (
    INDEX_AUTO,
    INDEX_CHOSEN,
    LIBRARY_DIRNAME,
    Library,
    LibraryLock,
    LockHolder,
    Manifest,
    default_library_dir,
    is_library,
    lock_holder,
    relative_photo_root,
    write_errors,
)
from db.schema import (
    SCHEMA_VERSION,
    Failure,
    Photo,
    blob_to_vector,
    disk_path_value,
    vector_to_blob,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "INDEX_AUTO",
    "INDEX_CHOSEN",
    "LIBRARY_DIRNAME",
    "SCHEMA_VERSION",
    "Failure",
    "Library",
    "LibraryCorruptError",
    "LibraryError",
    "LibraryLock",
    "LibraryLockedError",
    "LibraryNotFoundError",
    "LibraryWriteError",
    "LockHolder",
    "Manifest",
    "ManifestMismatchError",
    "Photo",
    "SchemaVersionError",
    "blob_to_vector",
    "content_hash",
    "default_library_dir",
    "disk_path_value",
    "hash_file",
    "is_library",
    "lock_holder",
    "path_key",
    "relative_photo_root",
    "vector_to_blob",
    "write_errors",
]
