"""`koclip-search serve`: the web page and JSON API over one library, on uvicorn.

FastAPI, uvicorn and the model are imported only when the command runs.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import click

from cli.common import domain_errors
from cli.main import main

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _allowed_hosts(host: str) -> list[str]:
    """Host headers to accept: loopback names, plus the address bound to; any for a wildcard."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return sorted({"127.0.0.1", "localhost", host.strip("[]")})


@main.command("serve")
@click.option(
    "--library",
    metavar="DIR",
    help="Library folder or photo folder holding one (default: nearest .koclip-search/ "
    "from the current folder upward).",
)
@click.option("--model", help="Must be the model the library was built with (the default).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback exposes your photos to the network.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="info",
    show_default=True,
)
@click.option(
    "--watch",
    is_flag=True,
    help="Also index the photo folder's changes as they land (this process then holds the "
    "library's writer lock).",
)
@domain_errors
def serve_command(
    library: str | None, model: str | None, host: str, port: int, log_level: str, watch: bool
) -> None:
    """Search and browse the library in a web browser.

    The page searches as you type (Korean input methods included), shows results as
    thumbnails, similar photos on click, and searches by a photo dropped on it. JSON API
    and its OpenAPI description: /api/docs.

    Example:

        koclip-search serve --library ~/Pictures --port 8000
        koclip-search serve --library ~/Pictures --watch
    """
    import uvicorn

    from db import LibraryError
    from search import Searcher
    from web import create_app

    photo_root = None
    try:
        with Searcher(library, model=model) as searcher:  # fail now, not on the first query
            directory, photo_root = searcher.directory, searcher.photo_root
    except LibraryError as exc:
        if watch and library is not None:
            directory = photo_root = library  # the watcher's first pass creates it
        else:
            # Serve anyway: the page explains, and picks the library up once it is indexed.
            directory = library
            click.echo(f"Warning: {exc}", err=True)
    watcher = _watcher(photo_root, directory, model) if watch else None
    if not _is_loopback(host):
        click.echo(
            f"Warning: listening on {host}: anyone who can reach it can see your photos.", err=True
        )
    app = create_app(directory, model, allowed_hosts=_allowed_hosts(host), watcher=watcher)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"koclip-search: http://{shown}:{port}/  (Ctrl+C to stop)", err=True)
    uvicorn.run(
        app, host=host, port=port, log_level=log_level, server_header=False, proxy_headers=False
    )


def _watcher(photo_root: str | Path | None, directory: str | Path, model: str | None) -> Any:
    """serve --watch: the watcher of the library's photo folder, for the app to run."""
    from cli.common import CommandError
    from db import is_library
    from indexer import IndexOptions, WatchThread

    if photo_root is None:
        raise CommandError("serve --watch needs --library PHOTO_DIR (or a library to find)", 2)
    library = Path(directory) if is_library(Path(directory)) else None
    return WatchThread(Path(photo_root), IndexOptions(library=library, model=model))
