"""API errors: every failure leaves as JSON `{"error": message, "code": key}` with a status code."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from koclip.errors import KoclipSearchError

log = logging.getLogger("koclip_search.web")


class ApiError(KoclipSearchError):
    """An error only the web raises (a missing photo, an upload too large): its own row."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.code = code


def error_response(status: int, code: str, message: str) -> JSONResponse:
    """The one shape of every error body."""
    return JSONResponse({"error": message, "code": code}, status_code=status)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def install_handlers(app: FastAPI) -> None:
    """Turn every exception into a JSON error; tracebacks go to the server log, never the client."""

    @app.exception_handler(KoclipSearchError)
    async def _domain(_: Request, exc: KoclipSearchError) -> JSONResponse:
        # Status and code are the class's row in the one table (koclip.errors).
        response = error_response(exc.http_status, exc.code, _first_line(exc))
        response.headers.update(getattr(exc, "headers", None) or {})  # Retry-After of a 503
        return response

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
