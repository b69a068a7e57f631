"""`koclip-search train`: contrastive fine-tuning of a KoCLIP checkpoint on captioned images."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import click

from cli.common import (
    FiniteFloat,
    captions_arguments,
    domain_errors,
    echo_summary,
    json_summary_option,
    options,
    shown,
    workers_option,
)
from cli.main import main


class WarmupType(click.ParamType):
    """A step count (500) or a fraction of all steps (0.1)."""

    name = "STEPS|FRACTION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a step count nor a fraction", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if number < 0 or (number >= 1 and number != int(number)):
            self.fail(f"{value!r}: give a whole number of steps or a fraction below 1", param, ctx)
        return number


# How a run keeps its progress in --out.
_checkpoint_options = options(
    shown(
        "--save-every",
        type=click.IntRange(min=0),
        default=0,
        help="Also checkpoint every this many steps (0: after each epoch only).",
    ),
    shown(
        "--resume/--no-resume",
        default=True,
        help="Go on from the last checkpoint in --out, if a run left one.",
    ),
)


@main.command("train", short_help="Fine-tune a KoCLIP checkpoint on captioned images.")
@captions_arguments
@click.option(
    "--from",
    "base_model",
    required=True,
    metavar="MODEL",
    help="Model name (koclip-base) or checkpoint folder to start from.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Checkpoint folder to write (and to resume from).",
)
@shown("--epochs", type=click.IntRange(min=1), default=5)
@shown(
    "--batch-size",
    type=click.IntRange(min=2),
    default=32,
    help="Images per step; each is the others' negative.",
)
@shown(
    "--lr",
    "learning_rate",
    type=FiniteFloat(min=0, min_open=True),
    default=5e-5,
    help="Peak learning rate (AdamW).",
)
@shown("--weight-decay", type=FiniteFloat(min=0), default=0.1)
@shown(
    "--warmup-steps",
    "warmup",
    type=WarmupType(),
    default="0.1",
    help="Linear warmup: a step count, or a fraction of all steps; then linear decay.",
)
@click.option(
    "--max-length",
    type=click.IntRange(min=3),
    help="Captions are padded (or cut) to this many tokens (default: 64, or the "
    "model's limit if lower).",
)
@click.option(
    "--freeze",
    type=click.Choice(["text", "vision"]),
    help="Keep this tower's weights (and its embeddings) as they are.",
)
@shown(
    "--val-split",
    type=FiniteFloat(0, 1, max_open=True),
    default=0.0,
    help="Fraction of images held out, evaluated after each epoch.",
)
@shown(
    "--prompt/--no-prompt",
    default=False,
    help="Wrap captions in the prompt template search uses by default.",
)
@shown("--seed", type=int, default=0)
@workers_option
@_checkpoint_options
@json_summary_option
@domain_errors
def train_command(
    captions: Path, images_dir: Path, base_model: str, out_dir: Path, as_json: bool, **options: Any
) -> None:
    """Fine-tune MODEL on CAPTIONS (JSON Lines: {"image": "path/under/--images", "captions":
    [...]}) with KoCLIP's contrastive loss; writes a checkpoint `--model` accepts.

    Example:

    \b
        koclip-search train mine.jsonl --images ~/Pictures --from koclip-base --out ~/koclip-mine
    """
    from train import TrainOptions, train

    try:
        opts = TrainOptions(**options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from cli.progress import TrainBar

    bar = TrainBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        summary = train(captions, images_dir, base_model, out_dir, opts, progress=bar)
    finally:
        if bar:
            bar.close()
    echo_summary(summary, as_json)
