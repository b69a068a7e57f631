"""`koclip-search duplicates`: list duplicate groups; set the extras aside, or put them back."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from cli.common import CommandError, FiniteFloat, domain_errors
from cli.main import main
from cli.search_cmd import OneLineCommand, _library_option
from koclip.names import DUPLICATE_KINDS, MIN_SIMILAR_COS, SIMILAR_COS

_DEFAULT_DIR = "\0default"  # --set-aside given without a folder


@main.command("duplicates", cls=OneLineCommand)
@_library_option
@click.option(
    "--kind",
    type=click.Choice((*DUPLICATE_KINDS, "all")),
    default="all",
    show_default=True,
    help="identical files, the same picture in other renditions, or similar shots.",
)
@click.option(
    "--threshold",
    type=FiniteFloat(-1.0, 1.0),
    default=None,
    metavar="COS",
    help=f"Embedding cosine for similar shots, {MIN_SIMILAR_COS} to 1 (default {SIMILAR_COS:.2f}; "
    "calibrate on your photos).",
)
@click.option("--under", metavar="SUBDIR", help="Only photos under this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--set-aside",
    "aside_dir",
    metavar="DIR",
    is_flag=False,
    flag_value=_DEFAULT_DIR,
    default=None,
    help="Move every non-keeper into DIR, keeping relative paths (default: set-aside/ in "
    "the library folder, which is never indexed).",
)
@click.option(
    "--keep",
    "keep",
    metavar="PATH",
    multiple=True,
    help="Keep this photo instead of the suggested one in its group (repeatable; absolute, "
    "from the current folder, or relative to the photo folder).",
)
@click.option("--restore", is_flag=True, help="Put every set-aside photo back.")
@click.option(
    "--cross-filesystem", is_flag=True, help="Allow --set-aside to copy to another file system."
)
@domain_errors
def duplicates_command(
    library: str | None,
    kind: str,
    threshold: float | None,
    under: str | None,
    as_json: bool,
    aside_dir: str | None,
    keep: tuple[str, ...],
    restore: bool,
    cross_filesystem: bool,
) -> None:
    """Group identical files, renditions of one picture and similar shots, largest group first,
    each with a suggested keeper (most pixels, then largest file, earliest taken, path).

    Examples:

    \b
        koclip-search duplicates --kind same --set-aside ~/review
        koclip-search duplicates --keep 2024/bada.jpg --set-aside
    """
    from indexer.aside import AsideGroup, set_aside_groups
    from indexer.aside import restore as restore_all
    from search import find_library
    from search.duplicates import DuplicateOptions, find_duplicates
    from search.filters import folder_filter
    from search.library import open_read_only

    if restore and (aside_dir is not None or keep):
        raise CommandError(
            "--restore puts everything back: give it without --set-aside or --keep", 2
        )
    library_dir = find_library(library)
    if restore:
        report = restore_all(library_dir)
        _echo_report(report, "restored", as_json)
        if report.skipped:  # journaled photos that could not come back: the work failed
            raise CommandError(
                f"{len(report.skipped)} set-aside photos could not be put back (see above)", 1
            )
        return
    lib, _ = open_read_only(library_dir)
    with lib:
        folder = folder_filter(under, lib.photo_root()) if under else None
        try:  # the one rule for the threshold's range (the web's too)
            options = DuplicateOptions(
                kind=kind,
                threshold=SIMILAR_COS if threshold is None else threshold,
                under=folder,
            )
        except ValueError as exc:
            raise CommandError(f"--{exc}", 2) from None
        groups = find_duplicates(lib, options)
        if keep:
            groups = _with_keepers(groups, keep, lib.photo_root())
    if aside_dir is None:
        _echo_groups(groups, as_json)
        return

    def current_groups() -> list:  # under the writer lock: still the groups chosen from?
        with open_read_only(library_dir)[0] as now:
            return [[p.id for p in g.photos] for g in find_duplicates(now, options)]

    chosen = [AsideGroup(tuple(p.id for p in g.photos), g.keep.id) for g in groups]
    dest = None if aside_dir == _DEFAULT_DIR else aside_dir
    report = set_aside_groups(
        library_dir, chosen, current_groups, dest, cross_filesystem=cross_filesystem
    )
    _echo_report(report, "set aside", as_json)


def _with_keepers(groups: list, keep: tuple[str, ...], root: Path) -> list:
    """The groups with each --keep photo as its group's keeper; exit 2 for one in no group."""
    from search.duplicates import choose_keepers
    from search.filters import find_on_disk, relative_to_root

    keys = {}
    for text in keep:
        given = Path(text).expanduser()
        found = find_on_disk(given)
        if given.is_absolute() or os.path.lexists(found):
            key = relative_to_root(found, root)
        else:  # relative to the photo folder
            key = relative_to_root(find_on_disk(root / given), root)
        if key is None:
            raise CommandError(f"--keep {text}: not inside the library's photo folder {root}", 2)
        keys[key] = text
    try:
        chosen, missing = choose_keepers(groups, keys)
    except ValueError as exc:
        raise CommandError(f"--keep: {exc}", 2) from None
    if missing:
        raise CommandError(
            f"--keep {keys[missing[0]]}: not in any of the duplicate groups listed", 2
        )
    return chosen


def _echo_groups(groups: list, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"groups": [g.to_json() for g in groups]}, ensure_ascii=False))
        return
    if not groups:
        click.echo("no duplicates found")
        return
    for g in groups:
        click.echo(f"{g.kind} ({len(g.photos)} photos), keep: {g.keep.path}  [{g.reason}]")
        for p in g.photos:
            mark = "*" if p is g.keep else " "
            click.echo(
                f"  {mark} {p.similarity:5.3f}  {p.width}x{p.height}  {p.bytes:>10,} B  "
                f"{p.taken_at:%Y-%m-%d %H:%M}  {p.path}"
            )


def _echo_report(report: Any, verb: str, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.to_json(), ensure_ascii=False))
        return
    for path, why, photo_id in report.skipped:
        click.echo(f"skipped {path if path is not None else f'photo id {photo_id}'}: {why}")
    click.echo(f"{verb}: {len(report.moved)} photos, skipped {len(report.skipped)}")
