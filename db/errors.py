"""Domain errors of the library layer; the CLI turns them into messages."""

from __future__ import annotations


class LibraryError(Exception):
    """Base class: the library cannot be opened, read or written."""


class LibraryNotFoundError(LibraryError):
    """No library exists where one was expected."""


class LibraryLockedError(LibraryError):
    """Another process holds the library's writer lock."""


class SchemaVersionError(LibraryError):
    """The library was written by an incompatible schema version."""


class ManifestMismatchError(LibraryError):
    """The library's vectors were made by another model or preprocessing."""


class LibraryWriteError(LibraryError):
    """Writing the library failed (disk full, permission denied, ...); nothing was half-written."""
