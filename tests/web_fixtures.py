"""Helpers for the web tests: the serve command without its server."""

from __future__ import annotations


def served(monkeypatch) -> list:
    """uvicorn's server run replaced by a note of its config and the socket it was given."""
    import uvicorn

    calls: list = []

    def run(server, sockets=None):
        calls.append((server.config, sockets))
        for sock in sockets or ():
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    # Its logging set-up would keep CliRunner's captured stderr after the test closed it.
    monkeypatch.setattr(uvicorn.Config, "configure_logging", lambda config: None)
    return calls
