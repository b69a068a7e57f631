"""Domain errors of the library layer; the CLI and the web report them by their class's row."""

from __future__ import annotations

from pathlib import Path

from koclip.errors import KoclipSearchError

LIBRARY_DIRNAME = ".koclip-search"


class LibraryError(KoclipSearchError):
    """Base class: the library cannot be opened, read or written."""

    exit_code = 2
    http_status = 503
    code = "library_error"


class LibraryNotFoundError(LibraryError):
    """No library exists where one was expected (or it has nothing indexed yet)."""

    code = "no_library"


class LibraryCorruptError(LibraryError):
    """A library file is damaged (database, FAISS index, manifest, a stored vector); the
    message names the file and the command that repairs it."""


class LibraryLockedError(LibraryError):
    """Another process holds the library's writer lock."""

    exit_code = 1


class SchemaVersionError(LibraryError):
    """The library was written by an incompatible schema version."""


class ManifestMismatchError(LibraryError):
    """The library's vectors were made by another model or preprocessing."""

    http_status = 409
    code = "model_mismatch"


class LibraryWriteError(LibraryError):
    """Writing the library failed (disk full, permission denied, ...); nothing was half-written."""

    exit_code = 1


def index_command(directory: Path, *, rebuild: bool = False) -> str:
    """The `koclip-search index` command line that repairs (or rebuilds) the library in
    `directory`, for messages."""
    directory = Path(directory)
    flag = " --rebuild" if rebuild else ""
    if directory.name == LIBRARY_DIRNAME:
        return f"koclip-search index{flag} {directory.parent}"
    return f"koclip-search index{flag} PHOTO_DIR --library {directory}"
