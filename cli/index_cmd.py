"""`koclip-search index`: wires the CLI flags to `indexer.index_photos`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cli.common import FiniteFloat, domain_errors, echo_summary
from cli.main import main


@main.command("index")
@click.argument("photo_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--library",
    type=click.Path(file_okay=False, path_type=Path),
    help="Library folder (default: PHOTO_DIR/.koclip-search).",
)
@click.option(
    "--model", help="Model name or checkpoint folder (default: the library's, else koclip-base)."
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "int8"]),
    default="auto",
    show_default=True,
    envvar="KOCLIP_PRECISION",
    help="Vision tower arithmetic: int8 (ONNX Runtime) is ~2x faster where the CPU has VNNI; "
    "auto uses it there when installed and exact enough.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=1), help="Decoding threads (default: one per CPU)."
)
@click.option(
    "--exclude", multiple=True, metavar="GLOB", help="Skip matching paths or names; repeatable."
)
@click.option(
    "--max-megapixels",
    type=FiniteFloat(min=0, min_open=True),
    default=100.0,
    show_default=True,
    help="Larger images are recorded as failed (decompression-bomb guard).",
)
@click.option(
    "--rebuild", is_flag=True, help="Drop every vector and re-encode all photos (e.g. new model)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@domain_errors
def index_command(photo_dir: Path, as_json: bool, **options: Any) -> None:
    """Index PHOTO_DIR (recursively) so its photos can be searched; only changes are re-read.

    Example:

        koclip-search index ~/Pictures --exclude '*/screenshots/*'
    """
    # Imported here: jax and friends cost every other command their start-up time otherwise.
    from cli.progress import ProgressBar
    from indexer import IndexOptions, index_photos

    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        summary = index_photos(photo_dir, IndexOptions(**options), progress=bar)
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
    echo_summary(summary, as_json)
