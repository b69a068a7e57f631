"""`koclip-search index`: wires the CLI flags to `indexer.index_photos`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.common import (
    FiniteFloat,
    domain_errors,
    echo_summary,
    json_summary_option,
    options,
    ray_address_param,
    ray_option,
    shown,
    workers_option,
)
from cli.main import ARGV_KEY, main
from koclip.names import MAX_PIXELS, PRECISIONS

# `index --watch` of an object store's URL lists it this often (seconds) unless --poll says.
URL_POLL_SECONDS = 60.0

_watch_options = options(
    click.option(
        "--watch",
        is_flag=True,
        help="Then keep running: index new, changed, moved and deleted photos as they land.",
    ),
    click.option(
        "--poll",
        type=FiniteFloat(min=0, min_open=True),
        is_flag=False,
        flag_value=30.0,
        default=None,
        metavar="[SECONDS]",
        help="With --watch: walk the folder for changes every SECONDS (default 30) instead of "
        "waiting for the system's events (network shares send none). A URL PHOTO_DIR is "
        "always polled: its listing every SECONDS (default 60).",
    ),
    shown(
        "--settle",
        type=FiniteFloat(min=0),
        default=2.0,
        metavar="SECONDS",
        help="With --watch: how long a file must stay unchanged before it is read.",
    ),
)

_ray_options = options(
    ray_option(
        "Read and encode on a Ray cluster: auto (RAY_ADDRESS or the cluster started here), "
        "local (a private Ray on this machine) or HOST:PORT; alone: the first of RAY_ADDRESS, "
        "this machine's cluster, a private one. PHOTO_DIR must be at the same path on every "
        "node; an s3:// PHOTO_DIR is read by each node with its own credentials.",
    ),
    click.option(
        "--ray-workers",
        type=click.IntRange(min=1),
        help="With --ray: workers at once, each with its own model (default: as many as fit).",
    ),
    shown(
        "--cpus-per-worker",
        type=FiniteFloat(min=0, min_open=True),
        default=1.0,
        help="With --ray: CPUs each worker takes (and decoding threads it runs).",
    ),
    shown(
        "--gpus-per-worker",
        type=FiniteFloat(min=0),
        default=0.0,
        help="With --ray: GPUs each worker takes; a fraction lets several share one card.",
    ),
)


class PhotoRoot(click.ParamType):
    """PHOTO_DIR: an existing folder, or an object store's URL (s3://bucket/prefix), kept as
    text (storage opens it)."""

    name = "photo_dir"
    _folder = click.Path(exists=True, file_okay=False, path_type=Path)

    def convert(self, value: Any, param: Any, ctx: Any) -> Path | str:
        from storage import is_url

        if isinstance(value, str) and is_url(value):
            return value
        return self._folder.convert(value, param, ctx)


@main.command("index")
@click.argument("photo_dir", type=PhotoRoot())
@click.option(
    "--library",
    type=click.Path(file_okay=False, path_type=Path),
    help="Library folder (default: PHOTO_DIR/.koclip-search; required for a URL).",
)
@click.option(
    "--endpoint-url",
    metavar="URL",
    help="With an s3:// PHOTO_DIR: the S3-compatible store's endpoint (MinIO, Ceph, ...; "
    "default: $AWS_ENDPOINT_URL, else the library's, else AWS). Credentials come from the "
    "standard chain (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, instance roles).",
)
@click.option(
    "--model", help="Model name or checkpoint folder (default: the library's, else koclip-base)."
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="Vision tower arithmetic (default: $KOCLIP_PRECISION, else auto). auto: bf16 "
    "(OpenVINO) where the CPU has it (AMX or AVX512-BF16), else fp32 (the reference). int8 "
    "(ONNX Runtime) only when asked: faster still, but it moves more search results than bf16.",
)
@shown("--batch-size", type=click.IntRange(min=1), default=32)
@workers_option
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Skip matching paths or names, now and in every later run (the library keeps its "
    "excludes: `info` lists them) and remove matching photos from the library; repeatable.",
)
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Take GLOB out of the library's excludes (as `info` lists it): matching photos are "
    "indexed again; repeatable.",
)
@shown(
    "--max-megapixels",
    # Above 100,000 megapixels the limit means nothing (and 1e308 pixels overflow).
    type=FiniteFloat(min=0, min_open=True, max=100_000),
    default=MAX_PIXELS / 1e6,
    help="Larger images are recorded as failed (decompression-bomb guard).",
)
@click.option(
    "--follow-links",
    is_flag=True,
    help="Follow symlinks that lead out of PHOTO_DIR (default: record them as failed).",
)
@click.option(
    "--allow-empty-root",
    is_flag=True,
    help="Let a PHOTO_DIR that holds none of the library's photos empty the library "
    "(refused by default: an unmounted card looks just like that).",
)
@click.option(
    "--rebuild", is_flag=True, help="Drop every vector and re-encode all photos (e.g. new model)."
)
@_watch_options
@_ray_options
@json_summary_option
@domain_errors
def index_command(
    photo_dir: Path | str,
    as_json: bool,
    watch: bool,
    poll: float | None,
    settle: float,
    ray_address: str | None,
    ray_workers: int | None,
    cpus_per_worker: float,
    gpus_per_worker: float,
    **options: Any,
) -> None:
    """Index PHOTO_DIR (recursively) so its photos can be searched; only changes are re-read.
    PHOTO_DIR may be an object store's URL (s3://bucket/prefix: pip install
    'koclip-search[s3]'), with --library DIR.

    Examples:

    \b
        koclip-search index ~/Pictures --exclude '*/screenshots/*'
        koclip-search index ~/Pictures --include '*/screenshots/*'
        koclip-search index ~/Pictures --watch
        koclip-search index /mnt/photos --ray auto
        koclip-search index s3://bucket/photos --library ~/photos-library
    """
    both = sorted(set(options["exclude"]) & set(options["include"]))
    if both:
        raise click.UsageError(f"{', '.join(both)}: given to both --exclude and --include")
    if (poll is not None or settle != 2.0) and not watch:
        raise click.UsageError("--poll and --settle go with --watch")
    ray_flags = ray_workers is not None or cpus_per_worker != 1.0 or gpus_per_worker != 0.0
    if ray_address is None and ray_flags:
        raise click.UsageError(
            "--ray-workers, --cpus-per-worker and --gpus-per-worker go with --ray"
        )
    if ray_address is not None:
        if watch:
            raise click.UsageError(
                "--watch runs on this machine only; index once with --ray, then --watch without it"
            )
        address = ray_address_param(ray_address, "put PHOTO_DIR before a bare --ray")
        # Ray ends a driver whose node went away without a word: a watchdog says so.
        from cli import supervise

        if supervise.can_supervise():
            supervise.run_supervised(click.get_current_context().meta[ARGV_KEY])
        supervise.mark_normal_end()

    # Imported here: jax and friends cost every other command their start-up time otherwise.
    from cli.progress import FactsBar, ProgressBar, RebuildBar
    from indexer import IndexOptions, index_photos
    from indexer.ray_executor import RayOptions

    if ray_address is not None:
        options["ray"] = RayOptions(
            address=address,
            workers=ray_workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
        )
    if watch:
        from indexer import WatchOptions

        polling = {"poll": True, "poll_interval": poll} if poll is not None else {}
        if isinstance(photo_dir, str):  # an object store: no events, a listing every minute
            polling = {"poll": True, "poll_interval": poll or URL_POLL_SECONDS}
        watch_options = WatchOptions(quiet=settle, **polling)
        rebuilding = RebuildBar(sys.stderr, live=False, prefix="koclip-search: ")
        index_options = IndexOptions(**options, on_index_rebuild=rebuilding)
        _watch(photo_dir, index_options, watch_options, as_json=as_json)
        return

    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    rebuilding = RebuildBar(sys.stderr, live=bar is not None, interrupts=bar)
    facts_bar = FactsBar(sys.stderr, interrupts=bar) if bar is not None else None
    try:
        summary = index_photos(
            photo_dir,
            IndexOptions(**options, on_index_rebuild=rebuilding, on_facts_backfill=facts_bar),
            progress=bar,
        )
    except KeyboardInterrupt:
        if bar:
            bar.close()
        click.echo(
            "Interrupted: every committed batch is kept; run the same command again to resume.",
            err=True,
        )
        sys.exit(130)
    finally:
        if bar:
            bar.close()
        if facts_bar:
            facts_bar.close()
    echo_summary(summary, as_json)


def _watch(photo_dir: Path | str, options: Any, watch_options: Any, *, as_json: bool) -> None:
    """`index --watch`: each pass's summary on stdout (a JSON line each with --json), the
    watcher's state on stderr; Ctrl-C or SIGTERM stops it at the next batch."""
    import signal
    import threading
    from datetime import datetime

    from indexer import watch

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for the batch
            raise KeyboardInterrupt
        stop.set()

    def on_pass(summary: Any, full: bool) -> None:
        if as_json:
            click.echo(json.dumps(summary.to_json() | {"full": full}, ensure_ascii=False))
        else:
            stamp = datetime.now().strftime("%H:%M:%S")
            click.echo(f"{stamp} {summary.to_text()}")

    def on_state(line: str) -> None:
        hint = " (Ctrl+C to stop)" if line.startswith("watching") else ""
        click.echo(f"koclip-search: {line}{hint}", err=True)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        watch(
            photo_dir,
            options,
            watch_options,
            on_pass=on_pass,
            on_state=on_state,
            stop=stop,
        )
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("Stopped watching: every committed batch is kept.", err=True)
