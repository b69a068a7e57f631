"""`koclip-search serve`: the web page and JSON API over one library, on uvicorn.

FastAPI, uvicorn and the model are imported only when the command runs.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import ipaddress
import logging
import socket
from pathlib import Path
from typing import Any

import click

from cli.common import FiniteFloat, domain_errors, ray_option
from cli.main import main

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# web.batcher's defaults, repeated here so that `--help` imports no FastAPI (checked by
# tests/test_web_batching.py).
BATCH_WINDOW_MS = 5.0
MAX_BATCH = 16
QUEUE_SIZE = 256


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
    "--access-log",
    type=click.Choice(["requests", "all", "off"]),
    default="requests",
    show_default=True,
    help="Log every request (all), every request but thumbnails (requests), or none.",
)
@click.option(
    "--watch",
    is_flag=True,
    help="Also index the photo folder's changes as they land (this process then holds the "
    "library's writer lock).",
)
@click.option(
    "--batch-window-ms",
    type=click.FloatRange(0, 1000),
    default=BATCH_WINDOW_MS,
    show_default=True,
    help="How long a search waits for others arriving with it, to be encoded with them in one "
    "batch (0: no waiting; queries already waiting still go together).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 1024),
    default=MAX_BATCH,
    show_default=True,
    help="The most searches encoded together in one batch.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(1, 100_000),
    default=QUEUE_SIZE,
    show_default=True,
    help="The most searches waiting for their turn; past it a search is answered "
    "503 busy (with Retry-After) at once.",
)
@ray_option(
    "Serve from replicas on a Ray cluster (Ray Serve), one entry point at --host/--port: "
    "auto (RAY_ADDRESS or the cluster started here), local (a private Ray on this machine) or "
    "HOST:PORT. The library must be at the same path on every node; replicas only read it.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    help="With --ray: replicas, each with the library and the text model in memory "
    "(default: one per node).",
)
@click.option(
    "--max-ongoing",
    type=click.IntRange(min=1),
    help="With --ray: requests one replica works on at once (default 8).",
)
@click.option(
    "--max-queued",
    type=click.IntRange(min=1),
    help="With --ray: requests held while every replica is busy; beyond them 503 with "
    "Retry-After (default 128).",
)
@click.option(
    "--poll",
    type=FiniteFloat(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="With --watch: look for changes every SECONDS instead of waiting for the system's "
    "events (network shares send none). Photos in object storage (s3://…) send none either: "
    "their listing is read every SECONDS (default 60).",
)
@domain_errors
def serve_command(
    library: str | None,
    model: str | None,
    host: str,
    port: int,
    log_level: str,
    access_log: str,
    watch: bool,
    poll: float | None,
    batch_window_ms: float,
    max_batch: int,
    queue_size: int,
    ray_address: str | None = None,
    replicas: int | None = None,
    max_ongoing: int | None = None,
    max_queued: int | None = None,
) -> None:
    """Search and browse the library in a web browser.

    The page searches as you type (Korean input methods included; Enter searches at once),
    shows results as thumbnails, similar photos on click, and searches by a photo dropped on
    it. The JSON API is described at /api/docs (its OpenAPI document: /api/openapi.json);
    /api/health says when the server is ready, /metrics serves Prometheus metrics.

    Searches that arrive together are encoded in one batch (--batch-window-ms, --max-batch),
    each still answered on its own; past --queue-size waiting ones a search is refused with
    503 busy.

    Examples:

    \b
        koclip-search serve --library ~/Pictures --port 8000
        koclip-search serve --library ~/Pictures --watch
        koclip-search serve --library /mnt/photos --ray auto --replicas 4
        koclip-search serve --library ~/photos-library --watch --poll 300
    """
    if ray_address is not None or (replicas, max_ongoing, max_queued) != (None, None, None):
        cluster = {"address": ray_address, "replicas": replicas}
        limits = {
            "max_ongoing": max_ongoing,
            "max_queued": max_queued,
            "batch_window": batch_window_ms / 1000,
            "max_batch": max_batch,
            "queue_size": queue_size,
        }
        return _serve_on_ray(library, model, host, port, watch, cluster, limits)
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
    if poll is not None and not watch:
        raise click.UsageError("--poll goes with --watch")
    watcher = _watcher(photo_root, directory, model, poll) if watch else None
    if not _is_loopback(host):
        click.echo(
            f"Warning: listening on {host}: anyone who can reach it can see your photos.", err=True
        )
    sock = _bind(host, port)  # before the URL is printed: a port in use is one line
    app = create_app(
        directory,
        model,
        allowed_hosts=_allowed_hosts(host),
        watcher=watcher,
        batch_window=batch_window_ms / 1000,
        max_batch=max_batch,
        queue_size=queue_size,
    )
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"koclip-search: http://{shown}:{sock.getsockname()[1]}/  (Ctrl+C to stop)", err=True
    )
    _quiet_thumbnail_log(access_log)
    config = uvicorn.Config(
        app, log_level=log_level, server_header=False, proxy_headers=False, access_log=True
    )
    uvicorn.Server(config).run(sockets=[sock])


def _serve_on_ray(
    library: str | None,
    model: str | None,
    host: str,
    port: int,
    watch: bool,
    cluster: dict[str, Any],
    limits: dict[str, float | int | None],
) -> None:
    """serve --ray: replicas on a Ray cluster (web.replicas) until Ctrl+C or SIGTERM."""
    import signal
    import threading

    from cli.common import CommandError, ray_address_param

    if cluster["address"] is None:
        raise CommandError("--replicas, --max-ongoing and --max-queued go with --ray", 2)
    if watch:
        raise CommandError(
            "--watch runs in one process (the library's one writer); serve with --ray without "
            "it, and index --watch beside it",
            2,
        )
    try:
        address = ray_address_param(cluster["address"])
    except click.BadParameter as exc:
        raise CommandError(f"--ray: {exc.format_message()}", 2) from None
    from indexer.ray_executor import require_ray

    require_ray()  # before any model or library work: the pip line, exit 2
    from search import Searcher
    from web.replicas import ReplicaOptions, ReplicaService

    with Searcher(library, model=model) as searcher:  # fail here, not on every replica
        directory = searcher.directory
    if not _is_loopback(host):
        click.echo(
            f"Warning: listening on {host}: anyone who can reach it can see your photos.", err=True
        )
    if address == "local":
        _bind(host, port).close()  # a port in use is one line, not a proxy that never starts
    given = {name: value for name, value in limits.items() if value is not None}
    options = ReplicaOptions(
        address=address, replicas=cluster["replicas"], host=host, port=port, **given
    )
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    # Ray Serve sets up its logger when imported: its start-up chatter is quieted after that
    # (without Ray Serve, the service says what to install).
    with contextlib.suppress(ImportError):
        importlib.import_module("ray.serve")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    service = ReplicaService(directory, model, options=options, allowed_hosts=_allowed_hosts(host))
    try:
        service.start()
        # After Ray's start: its core installs a SIGTERM handler that aborts the process.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        shown = (0, 0)
        while True:
            ready = service.ready()
            if ready != shown:
                what = "ready" if shown == (0, 0) else "now ready"
                where = "" if service.head_is_here else f" on the Ray head node {service.head}"
                click.echo(
                    f"koclip-search: {service.url}{where}  ({ready[0]} of {ready[1]} replicas "
                    f"{what} on Ray; Ctrl+C to stop)",
                    err=True,
                )
                shown = ready
            if stop.wait(1.0):
                break
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        service.close()


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, made here so that a port in use or an address this machine does
    not have is one line (exit 1), not uvicorn's log after the URL was already printed."""
    from cli.common import CommandError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = f"port {port} on {host} is already in use (another serve?); pick one with --port"
        else:
            why = f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        raise CommandError(why, 1) from None
    sock.set_inheritable(True)
    return sock


class _NotThumbnails(logging.Filter):
    """Drops the access-log lines of thumbnails: a page of results asks for dozens."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) >= 3 and "/thumbnail" in str(args[2]))


def _quiet_thumbnail_log(access_log: str) -> None:
    if access_log == "all":
        return
    target = logging.getLogger("uvicorn.access")
    if access_log == "off":
        target.disabled = True
    else:
        target.addFilter(_NotThumbnails())


def _watcher(
    photo_root: str | Path | None, directory: str | Path, model: str | None, poll: float | None
) -> Any:
    """serve --watch: the watcher of the library's photo folder (or of its root in object
    storage, whose listing is read every `poll` seconds, default a minute), for the app to run."""
    from cli.common import CommandError
    from cli.index_cmd import URL_POLL_SECONDS
    from db import is_library
    from indexer import IndexOptions, WatchOptions, WatchThread
    from storage import is_url

    if photo_root is None:
        raise CommandError("serve --watch needs --library PHOTO_DIR (or a library to find)", 2)
    library = Path(directory) if is_library(Path(directory)) else None
    if is_url(str(photo_root)):
        root: str | Path = str(photo_root)
        watch_options = WatchOptions(poll=True, poll_interval=poll or URL_POLL_SECONDS)
    else:
        root = Path(photo_root)
        watch_options = WatchOptions(poll=True, poll_interval=poll) if poll else None
    return WatchThread(root, IndexOptions(library=library, model=model), watch_options)
