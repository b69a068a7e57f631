"""Pieces several commands share: domain errors as messages, option decorators (the captions
arguments, --workers, --json), and how a summary is printed."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import click


class Summary(Protocol):
    def to_json(self) -> dict[str, Any]: ...

    def to_text(self) -> str: ...


class CommandError(click.ClickException):
    """`Error: message` on stderr and `exit_code`: no usage block, no traceback."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def domain_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Report the product's errors by their class's row (`koclip.errors`): bad input or an
    unusable library exits 2, a failure of the work 1; anything else is a bug and a traceback.
    While the command runs, its long set-up phases (`koclip.phases`) are shown on stderr."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cli.progress import phases_shown
        from koclip.errors import KoclipSearchError, ModelUnavailableError
        from koclip.names import check_precision

        try:
            # A precision that is none (KOCLIP_PRECISION=bogus) is one line and exit 2 in every
            # command, before any work: the same check the Python API and the web make.
            check_precision(kwargs.get("precision"))
            with phases_shown(sys.stderr):
                return command(*args, **kwargs)
        except KoclipSearchError as exc:
            flag = _model_flag()
            if isinstance(exc, ModelUnavailableError) and flag:
                exc = exc.with_hint(f"pass {flag} DIR with a local checkpoint folder")
            message = str(exc).strip() or type(exc).__name__
            raise CommandError(message, exc.exit_code) from None

    return wrapper


# The parameters through which a command takes a model (`--model`, train's `--from`).
_MODEL_PARAMS = ("model", "base_model")


def _model_flag() -> str | None:
    """The running command's option naming a model (`--model`), if it has one."""
    ctx = click.get_current_context(silent=True)
    for param in ctx.command.params if ctx else ():
        if param.name in _MODEL_PARAMS and isinstance(param, click.Option):
            return param.opts[0]
    return None


class FiniteFloat(click.FloatRange):
    """A float option that refuses nan and inf (click's FloatRange lets both through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):  # before the range, which would call inf "out of range"
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        # click describes an unbounded range as "x<=None"; there is nothing to say then.
        if self.min is None and self.max is None:
            return ""
        return super()._describe_range()

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "FLOAT" if self.min is None and self.max is None else "FLOAT RANGE"


Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def shown(*decls: str, **attrs: Any) -> Decorator:
    """`click.option` whose default is shown in --help."""
    return click.option(*decls, show_default=True, **attrs)


def options(*decorators: Decorator) -> Decorator:
    """One decorator applying several options, listed in --help in the order given."""

    def apply(command: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


workers_option = click.option(
    "--workers", type=click.IntRange(min=1), help="Decoding threads (default: one per CPU)."
)
json_summary_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as JSON."
)


def captions_arguments(command: Callable[..., Any]) -> Callable[..., Any]:
    """CAPTIONS (JSON Lines) and --images, as `eval` and `train` take them."""
    command = click.option(
        "--images",
        "images_dir",
        required=True,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Folder the captions' image paths are relative to.",
    )(command)
    return click.argument("captions", type=click.Path(exists=True, dir_okay=False, path_type=Path))(
        command
    )


def echo_summary(summary: Summary, as_json: bool) -> None:
    """A run's summary: JSON (UTF-8, Hangul as is) or the human text."""
    if as_json:
        click.echo(json.dumps(summary.to_json(), ensure_ascii=False))
    else:
        click.echo(summary.to_text())


def ray_option(help: str) -> Callable[[Callable], Callable]:
    """`--ray [ADDRESS]` (a value or none: "" then), as `index` and `serve` take it; checked
    by `ray_address_param`."""
    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="",
        default=None,
        metavar="[ADDRESS]",
        help=help,
    )


def ray_address_param(value: str, bare_hint: str = "") -> str | None:
    """--ray's ADDRESS (`index` and `serve`): auto, local, HOST:PORT (or ray://HOST:PORT);
    "" (a bare --ray): None, Ray's own rule."""
    if value in ("", "auto", "local") or ":" in value:
        return value or None
    hint = f" ({bare_hint})" if bare_hint else ""
    raise click.BadParameter(f"{value!r} is not auto, local or HOST:PORT{hint}", param_hint="--ray")
