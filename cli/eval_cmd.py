"""`koclip-search eval`: recall@1/5/10 of a model on captioned images, both directions."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.common import captions_arguments, domain_errors, echo_summary
from cli.main import main


@main.command("eval", short_help="Recall@1/5/10 of a model on captioned images.")
@captions_arguments
@click.option(
    "--model",
    default="koclip-base",
    show_default=True,
    help="Model name or checkpoint folder (e.g. the --out of `train`).",
)
@click.option(
    "--prompt/--no-prompt",
    default=True,
    show_default=True,
    help="Encode captions in the prompt template, as `search` does by default.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--workers", type=click.IntRange(min=1), help="Decoding threads (default: one per CPU)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@domain_errors
def eval_command(
    captions: Path,
    images_dir: Path,
    model: str,
    prompt: bool,
    batch_size: int,
    workers: int | None,
    as_json: bool,
) -> None:
    """Text-to-image and image-to-text recall@1/5/10 (and their mean) of MODEL on CAPTIONS,
    a JSON Lines file: {"image": "path/under/--images", "captions": ["한국어 설명", ...]}.

    Example:

    \b
        koclip-search eval xm3600-ko.jsonl --images xm3600/images --json
    """
    from cli.progress import ProgressBar
    from train import evaluate

    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() and not as_json else None
    try:
        recall = evaluate(
            captions,
            images_dir,
            model,
            prompt=prompt,
            batch_size=batch_size,
            workers=workers,
            progress=bar,
        )
    finally:
        if bar:
            bar.close()
    echo_summary(recall, as_json)
