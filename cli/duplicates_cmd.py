"""`koclip-search duplicates`: list duplicate groups; set the extras aside, or put them back."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import click

from cli.common import CommandError, FiniteFloat, domain_errors
from cli.main import main
from cli.search_cmd import OneLineCommand, _human_size, _library_option
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
@click.option(
    "--dry-run",
    is_flag=True,
    help="With --set-aside: show what would move (each photo, its keeper and why) and move "
    "nothing.",
)
@click.option(
    "--restore",
    is_flag=True,
    help="Put every set-aside photo back (and remove the folders that leaves empty in the "
    "set-aside folder).",
)
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
    dry_run: bool,
    restore: bool,
    cross_filesystem: bool,
) -> None:
    """Group identical files, renditions of one picture and similar shots, largest group first,
    each with a suggested keeper (the camera original: EXIF date and JPEG/HEIC, over any
    re-encode; then most pixels, largest file, earliest taken, path).

    Examples:

    \b
        koclip-search duplicates --kind same --set-aside ~/review --dry-run
        koclip-search duplicates --kind same --set-aside ~/review
        koclip-search duplicates --keep 2024/bada.jpg --set-aside
        koclip-search duplicates --restore
    """
    from indexer.aside import (
        AsideGroup,
        aside_destination,
        check_destination,
        refuse_object_root,
        set_aside_groups,
    )
    from indexer.aside import restore as restore_all
    from search import find_library
    from search.duplicates import DuplicateOptions, find_duplicates, summarize
    from search.library import open_read_only
    from search.roots import PhotoRoot

    if restore and (aside_dir is not None or keep or dry_run):
        raise CommandError(
            "--restore puts everything back: give it without --set-aside, --keep or --dry-run", 2
        )
    if dry_run and aside_dir is None:
        raise CommandError("--dry-run goes with --set-aside (it shows what would move)", 2)
    library_dir = find_library(library)
    if restore:
        report = restore_all(library_dir)
        _echo_restored(report, as_json)
        if report.skipped:  # journaled photos that could not come back: the work failed
            raise CommandError(
                f"{len(report.skipped)} set-aside photos could not be put back (see above)", 1
            )
        return
    lib, _ = open_read_only(library_dir)
    with lib:
        if aside_dir is not None:  # before any work: refused for a root in object storage
            refuse_object_root(lib)
        photo_root = PhotoRoot.of(lib)
        folder = photo_root.folder(under) if under else None
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
            groups = _with_keepers(groups, keep, photo_root)
        root = lib.photo_root() if dry_run else Path()
    summary = summarize(groups)
    if aside_dir is None:
        _echo_groups(groups, summary, as_json)
        return
    dest = None if aside_dir == _DEFAULT_DIR else aside_dir
    if dry_run:
        target = check_destination(library_dir, dest, cross_filesystem=cross_filesystem)
        _echo_dry_run(groups, summary, target, root, as_json)
        return

    def current_groups() -> list:  # under the writer lock: still the groups chosen from?
        with open_read_only(library_dir)[0] as now:
            return [[p.id for p in g.photos] for g in find_duplicates(now, options)]

    chosen = [AsideGroup(tuple(p.id for p in g.photos), g.keep.id) for g in groups]
    report = set_aside_groups(
        library_dir, chosen, current_groups, dest, cross_filesystem=cross_filesystem
    )
    _echo_set_aside(report, summary, aside_destination(library_dir, dest), library_dir, as_json)


def _with_keepers(groups: list, keep: tuple[str, ...], photo_root: Any) -> list:
    """The groups with each --keep photo as its group's keeper (a path, or for a root in
    object storage a URL or key: `photo_root` is a search.roots.PhotoRoot); exit 2 for one
    in no group."""
    from search.duplicates import choose_keepers
    from search.filters import find_on_disk, relative_to_root

    keys = {}
    root = photo_root.path or photo_root.url
    for text in keep:
        given = Path(text).expanduser()
        found = find_on_disk(given)
        if photo_root.is_url:
            key = photo_root.key(text)
        elif given.is_absolute() or os.path.lexists(found):
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


def _summary_line(summary: Any) -> str:
    """The first line: how many groups and photos, and what the extras hold."""
    if not summary.groups:
        return "no duplicates found"
    groups = "1 group" if summary.groups == 1 else f"{summary.groups:,} groups"
    return (
        f"{groups}, {summary.photos:,} photos: setting the {summary.extras:,} extras aside "
        f"would free {_human_size(summary.extra_bytes)} in the photo folder"
    )


def _echo_groups(groups: list, summary: Any, as_json: bool) -> None:
    if as_json:
        out = {"summary": summary.to_json(), "groups": [g.to_json() for g in groups]}
        click.echo(json.dumps(out, ensure_ascii=False))
        return
    click.echo(_summary_line(summary))
    for g in groups:
        click.echo(f"{g.kind} ({len(g.photos)} photos), keep: {g.keep.path}  [{g.reason}]")
        for p in g.photos:
            mark = "*" if p is g.keep else " "
            click.echo(
                f"  {mark} {p.similarity:5.3f}  {p.width}x{p.height}  {p.bytes:>10,} B  "
                f"{p.taken_at:%Y-%m-%d %H:%M}  {p.path}"
            )


def _would_move(groups: list, folder: Path, root: Path) -> list[dict[str, Any]]:
    """What a set-aside of `groups` would move: each extra once, with its group's keeper."""
    from search.duplicates import extras_to_move
    from search.results import json_path

    first: dict[int, tuple[Any, Any]] = {}
    for g in groups:
        for p in g.extras:
            first.setdefault(p.id, (p, g))
    out = []
    for pid in extras_to_move(groups):
        photo, group = first[pid]
        out.append(
            {
                "path": json_path(photo.path),
                "to": json_path(folder / os.path.relpath(photo.path, root)),
                "bytes": photo.bytes,
                "kind": group.kind,
                "keep": json_path(group.keep.path),
                "reason": group.reason,
            }
        )
    return out


def _echo_dry_run(groups: list, summary: Any, folder: Path, root: Path, as_json: bool) -> None:
    """`--set-aside --dry-run`: what would move where, and why; nothing moves."""
    moves = _would_move(groups, folder, root)
    if as_json:
        out = {"dry_run": True, "destination": str(folder), "summary": summary.to_json()}
        click.echo(json.dumps(out | {"would_move": moves}, ensure_ascii=False))
        return
    click.echo(_summary_line(summary))
    click.echo(
        f"dry run: nothing was moved; --set-aside would move {len(moves):,} photos into {folder}"
    )
    for m in moves:
        click.echo(f"  {m['path']} -> {m['to']}")
        click.echo(f"      keep: {m['keep']}  [{m['kind']}: {m['reason']}]")


def _undo_command(library_dir: Path) -> str:
    """The exact command that puts every set-aside photo back, quoted for a POSIX shell."""
    return f"koclip-search duplicates --restore --library {shlex.quote(str(Path(library_dir).absolute()))}"


def _echo_set_aside(
    report: Any, summary: Any, folder: Path, library_dir: Path, as_json: bool
) -> None:
    undo = _undo_command(library_dir)
    if as_json:
        out = report.to_json() | {"destination": str(folder), "undo": undo}
        click.echo(json.dumps(out | {"summary": summary.to_json()}, ensure_ascii=False))
        return
    click.echo(_summary_line(summary))
    _echo_skipped(report)
    click.echo(f"set aside: {len(report.moved)} photos, skipped {len(report.skipped)}")
    if report.moved:
        click.echo(f"they are in {folder}")
        click.echo(f"to put them back: {undo}")


def _echo_restored(report: Any, as_json: bool) -> None:
    from search.results import json_path

    if as_json:
        restored = {"count": len(report.moved), "paths": [json_path(p) for p in report.places]}
        click.echo(json.dumps(report.to_json() | {"restored": restored}, ensure_ascii=False))
        return
    _echo_skipped(report)
    click.echo(f"restored: {len(report.moved)} photos, skipped {len(report.skipped)}")


def _echo_skipped(report: Any) -> None:
    for path, why, photo_id in report.skipped:
        click.echo(f"skipped {path if path is not None else f'photo id {photo_id}'}: {why}")
