"""Domain errors raised by search/; the CLI turns each into a one-line message and exit code 2."""

from __future__ import annotations


class SearchError(Exception):
    """Base class for every error search/ raises on bad input or an unusable library."""


class QueryError(SearchError):
    """The query itself is unusable: empty, malformed, or its terms cancel out."""


class QueryImageError(QueryError):
    """An image named in a query cannot be read."""


class DateError(QueryError):
    """A --after/--before value is not a date search understands."""


class LibraryError(SearchError):
    """The library cannot be found or opened."""


class ModelMismatchError(SearchError):
    """The model asked for is not the one the library's vectors were made with."""
