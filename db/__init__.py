"""The library on disk: SQLite schema and sessions, manifest, writer lock, FAISS files.

Knows nothing of the model; each module's docstring describes its part: `library` (the
folder, engine and sessions), `schema` (the tables) and `migrate` (their upgrades),
`photos` (every read of photo rows) and `photo_writes` (the indexer's writes), `manifest`,
`lock`, `index_files` (the FAISS file's life) and `vectors` (FAISS itself), `engine`
(SQLite and its errors), `content` (file names, hashes).
"""

from db.content import IMAGE_SUFFIXES, content_hash, hash_bytes, hash_file, path_key
from db.engine import write_errors
from db.errors import (
    LIBRARY_DIRNAME,
    LibraryCorruptError,
    LibraryError,
    LibraryLockedError,
    LibraryNotFoundError,
    LibraryWriteError,
    ManifestMismatchError,
    SchemaVersionError,
)
from db.library import Library, default_library_dir, is_library, relative_photo_root
from db.lock import LibraryLock, LockHolder, holder_text, lock_holder
from db.manifest import INDEX_AUTO, INDEX_CHOSEN, Manifest
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
    "hash_bytes",
    "hash_file",
    "holder_text",
    "is_library",
    "lock_holder",
    "path_key",
    "relative_photo_root",
    "vector_to_blob",
    "write_errors",
]
