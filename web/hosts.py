"""The guards in front of every route, answering in the API's JSON error shape.

`HostGuard` checks the Host header (against DNS rebinding); `OriginGuard` refuses a request
that changes something (any method but GET, HEAD, OPTIONS: searches by upload, compose,
set-aside, restore) when a browser says another site sent it; `BodyLimit` bounds every request
body, declared or streamed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.errors import error_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# Sec-Fetch-Site values of a request that another site made the browser send.
FOREIGN_SITES = frozenset({"cross-site", "same-site"})


def host_name(header: str) -> str:
    """The host of a Host header, without its port (`[::1]:8000` -> `::1`), lower-case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.split(":", 1)[0]


class HostGuard:
    """Refuse requests whose Host header names none of `allowed_hosts` (`*` allows any;
    `*.example.org` any subdomain) with a 400 `bad_host` JSON error."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.any = "*" in allowed_hosts
        self.exact = {h.lower() for h in allowed_hosts if not h.startswith("*")}
        self.suffixes = tuple(h[1:].lower() for h in allowed_hosts if h.startswith("*."))

    def allows(self, host: str) -> bool:
        """Whether a request for `host` (a name or address, no port) is answered."""
        return self.any or host in self.exact or (bool(host) and host.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.any:
            host = host_name(Headers(scope=scope).get("host", ""))
            if not self.allows(host):
                response = error_response(
                    400,
                    "bad_host",
                    "this server does not answer for that Host header (a guard against DNS "
                    "rebinding); open the page at the address the server listens on",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def origin_of(scheme: str, host_header: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of the server as a request's Host header names it (the port made
    explicit); None when the header is empty or malformed."""
    scheme = scheme.lower()
    try:
        parts = urlsplit(f"{scheme}://{host_header.strip()}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.path or parts.query or parts.username is not None:
        return None
    return scheme, host.lower(), port if port is not None else DEFAULT_PORTS.get(scheme, 0)


def parse_origin(header: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin header; None for `null` or anything malformed."""
    try:
        parts = urlsplit(header.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in DEFAULT_PORTS or parts.path not in ("", "/"):
        return None
    return origin_of(parts.scheme, parts.netloc)


class OriginGuard:
    """Refuse a state-changing request (any method but GET, HEAD and OPTIONS) that a browser
    sent on another site's behalf, with a 403 `cross_origin` JSON error.

    Same-origin means the Origin header's scheme://host:port equals the server's own (its
    scheme and the Host header the request came with, which HostGuard has checked). An
    `Origin: null` (a sandboxed frame, a file:// page) is foreign. Without an Origin header a
    `Sec-Fetch-Site` of cross-site or same-site is foreign too; a request with neither header
    (curl, scripts, the CLI) is not a browser's and is answered.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def foreign(self, scope: Scope) -> str | None:
        """Why the request comes from another site, or None if it does not."""
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None:
            own = origin_of(scope.get("scheme", "http"), headers.get("host", ""))
            sent = parse_origin(origin)
            if sent is None or own is None or sent != own:
                return f"the request comes from another site ({origin[:200]!r})"
            return None
        site = headers.get("sec-fetch-site", "").strip().lower()
        if site in FOREIGN_SITES:
            return f"the browser marked the request as {site}"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"].upper() not in SAFE_METHODS:
            why = self.foreign(scope)
            if why is not None:
                response = error_response(
                    403,
                    "cross_origin",
                    f"refused: {why}; this server only takes changes and uploads from its own "
                    "page (open it at the address the server listens on)",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse a request body over its route's limit (`limits` by exact path, else `default`
    bytes) with a 413 `too_large` JSON error: at once when Content-Length declares more, else
    as soon as the streamed body passes it (an HTTPException from `receive`, which the
    routes' error handler answers)."""

    def __init__(self, app: ASGIApp, default: int, limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default = default
        self.limits = dict(limits or {})

    def limit_for(self, path: str) -> int:
        """Body bytes a request to `path` may carry."""
        return self.limits.get(path, self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):  # served under a prefix: the route's own path
            path = path[len(root) :]
        limit = self.limit_for(path)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.strip().isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        too_large = partial(HTTPException, 413, _too_large_message(limit))
        await self.app(scope, body_limited(receive, limit, too_large), send)


def _too_large_message(limit: int) -> str:
    if limit >= 1 << 20:
        return f"the request body is larger than {limit / (1 << 20):.0f} MB"
    return f"the request body is larger than {limit // 1024} KB"


def _too_large(limit: int) -> ASGIApp:
    return error_response(413, "too_large", _too_large_message(limit))


def body_limited(
    receive: Receive, limit: int, too_large: Callable[[], Exception]
) -> Callable[[], Awaitable[Message]]:
    """An ASGI `receive` that raises `too_large()` once more than `limit` body bytes arrived
    (the server's limit here, the upload route's in web.uploads)."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large()
        return message

    return receive_limited
