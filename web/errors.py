"""API errors: every failure leaves as JSON `{"error": message, "code": key}` with a status code."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import db
from search import DateError, LibraryError, ModelMismatchError, QueryError, QueryImageError

log = logging.getLogger("koclip_search.web")


class ApiError(Exception):
    """An error the page shows: `code` is a stable key the page maps to Korean/English text."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The one shape of every error body."""
    return JSONResponse({"error": message, "code": code}, status_code=status)


# Domain errors by most specific class first: (class, status, code).
_DOMAIN = [
    (DateError, 400, "bad_date"),
    (QueryImageError, 400, "bad_image"),
    (QueryError, 400, "bad_query"),
    (LibraryError, 503, "no_library"),
    (ModelMismatchError, 409, "model_mismatch"),
    (db.LibraryNotFoundError, 503, "no_library"),
    (db.SchemaVersionError, 503, "library_error"),
    (db.LibraryError, 503, "library_error"),
]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def install_handlers(app: FastAPI) -> None:
    """Turn every exception into a JSON error; tracebacks go to the server log, never the client."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    for cls, status, code in _DOMAIN:

        async def _domain(
            _: Request, exc: Exception, status: int = status, code: str = code
        ) -> JSONResponse:
            return error_response(status, code, _first_line(exc))

        app.add_exception_handler(cls, _domain)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, code, message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:3]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
        return error_response(422, "bad_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal server error (see the server log)")
