"""`koclip-search download`: a named model into the cache, or into a folder to carry."""

from __future__ import annotations

import json

import click

from cli.common import domain_errors
from cli.main import main


@main.command("download", short_help="Fetch a model (and its tokenizer) for offline use.")
@click.argument("name", default="koclip-base")
@click.option(
    "--to",
    "to",
    type=click.Path(file_okay=False, writable=True, resolve_path=True),
    help="Also copy it into this new folder (config, weights, vocabulary), to carry to a "
    "machine without network and use there with --model DIR.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the folder as JSON.")
@domain_errors
def download_command(name: str, to: str | None, as_json: bool) -> None:
    """Fetch the model NAME (koclip-base, koclip-large, koclip-base-pt) and klue/roberta-large's
    vocabulary into the Hugging Face cache, saying the size first; files already there are
    not fetched again.

    Examples:

    \b
        koclip-search download                       # koclip-base into the cache
        koclip-search download koclip-base --to ./koclip-base
        koclip-search index ~/Pictures --model ./koclip-base   # on the offline machine
    """
    from pathlib import Path

    from koclip.checkpoints.download import download, plan_download

    plan = plan_download(name)
    if plan.missing:
        total = plan.total_bytes
        size = f"{total / 1e9:.2f} GB" if total is not None else "size unknown"
        files = ", ".join(f for _, f, _ in plan.missing)
        click.echo(f"{name}: {size} to download ({files})", err=True)
    else:
        click.echo(f"{name}: already in the Hugging Face cache", err=True)
    folder = download(
        name,
        Path(to) if to else None,
        on_file=lambda f: click.echo(f"downloading {f}", err=True),
    )
    if as_json:
        click.echo(json.dumps({"model": name, "folder": str(folder)}, ensure_ascii=False))
    else:
        click.echo(f"{name} is ready: {folder}")
        if to:
            click.echo(f"use it with --model {folder}")
