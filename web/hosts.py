"""The Host header check (against DNS rebinding), answering in the API's JSON error shape."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from web.errors import error_response


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
