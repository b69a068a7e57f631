"""Domain errors raised by search/; the library's own errors are `db`'s, the model's `koclip`'s."""

from __future__ import annotations

from koclip.errors import KoclipSearchError


class SearchError(KoclipSearchError):
    """Base class for every error search/ raises on bad input."""

    exit_code = 2
    http_status = 400
    code = "bad_query"


class QueryError(SearchError):
    """The query itself is unusable: empty, malformed, or its terms cancel out."""


class QueryImageError(QueryError):
    """An image named in a query cannot be read."""

    code = "bad_image"


class DateError(QueryError):
    """A --after/--before value is not a date search understands."""

    code = "bad_date"


class ModelMismatchError(SearchError):
    """The model asked for is not the one the library's vectors were made with."""

    http_status = 409
    code = "model_mismatch"
