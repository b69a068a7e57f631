"""`koclip-search search / similar / info / reindex`: thin wiring over search.Searcher.

Nothing heavy is imported at module level: `koclip-search --help` and `index` must not pay
for numpy, faiss or JAX, and `search` only pays for what its query needs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from cli.common import CommandError, FiniteFloat, domain_errors, options, shown
from cli.main import main
from koclip.names import AUTO_INDEX, INDEX_TYPES

if TYPE_CHECKING:
    from search import LibraryInfo, Searcher, SearchResults

INDEX_CHOICES = (AUTO_INDEX, *INDEX_TYPES)
SORT_CHOICES = ("relevance", "newest", "oldest")


class Threshold(FiniteFloat):
    """--threshold: auto, none, or a finite number."""

    name = "threshold"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("auto", "none"):
            return value.strip().lower()
        return super().convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "auto|none|FLOAT"


class OneLineCommand(click.Command):
    """A command whose argument errors (bad -k, missing QUERY) print one line, not the usage."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.NoSuchOption as exc:
            hint = ""
            if not exc.option_name.lstrip("-")[:1].isascii():
                hint = " (to subtract a term, put a space after the minus: `바다 - 사람`)"
            raise CommandError(exc.format_message() + hint, 2) from None
        except click.UsageError as exc:
            raise CommandError(exc.format_message(), 2) from None


def _library_option(f: Callable) -> Callable:
    return click.option(
        "--library",
        metavar="DIR",
        help="Library folder or photo folder holding one (default: nearest .koclip-search/ "
        "from the current folder upward).",
    )(f)


# The options `search` and `similar` share.
_query_options = options(
    _library_option,
    click.option("--model", help="Must be the model the library was built with (the default)."),
    shown("-k", "k", type=click.IntRange(min=1), default=20, help="Number of results."),
    shown("--offset", type=click.IntRange(min=0), default=0, help="Skip this many (paging)."),
    click.option(
        "--threshold",
        type=Threshold(),
        help="Only results with a cosine score >= this number; auto: the photos that stand "
        "out for the query (the default under --sort newest/oldest); none: no cutoff.",
    ),
    shown(
        "--sort",
        type=click.Choice(SORT_CHOICES),
        default="relevance",
        help="relevance: best match first; newest / oldest: by the date taken, among the "
        "photos the threshold keeps.",
    ),
    click.option("--under", metavar="SUBDIR", help="Only photos under this folder."),
    click.option("--after", metavar="DATE", help="Only photos taken on or after DATE."),
    click.option("--before", metavar="DATE", help="Only photos taken before DATE."),
    click.option("--json", "as_json", is_flag=True, help="Print JSON."),
    click.option("--paths", "as_paths", is_flag=True, help="Print one absolute path per line."),
)


def _open(library: str | None, model: str | None) -> Searcher:
    from search import Searcher

    # One-shot processes keep text embeddings on disk: a repeated query (paging with
    # --offset, a re-run) then needs no text tower at all. New texts and query images go
    # through the numpy towers: for a handful of queries, importing JAX and loading its
    # compiled program costs far more than the forward passes it speeds up.
    return Searcher(library, model=model, disk_cache=True, backend="numpy")


def _check_output(as_json: bool, as_paths: bool) -> None:
    if as_json and as_paths:
        raise CommandError("--json and --paths cannot be used together", 2)


def _print_results(results: SearchResults, as_json: bool, as_paths: bool) -> None:
    understood = results.understood
    shown = understood is not None and understood.has_facts and not (as_json or as_paths)
    if shown and sys.stdout.isatty():
        click.echo(understood.describe())  # type: ignore[union-attr]
    if as_json:
        click.echo(json.dumps(results.to_json(), ensure_ascii=False))
    elif as_paths:
        for hit in results:  # the exact bytes of the name, for xargs and friends
            click.echo(os.fsencode(hit.path))
    else:
        click.echo(format_table(results))


@main.command("search", cls=OneLineCommand)
@click.argument("query", nargs=-1, required=True)
@_query_options
@click.option("--no-prompt", is_flag=True, help="Encode text as typed, not in the prompt template.")
@click.option(
    "--literal",
    is_flag=True,
    help="Search the text as typed: no dates, places or cameras read from it, no match on "
    "file names and keywords.",
)
@domain_errors
def search_command(
    query: tuple[str, ...], as_json: bool, as_paths: bool, no_prompt: bool, **options: Any
) -> None:
    """Find photos matching QUERY: Korean or English text, image paths, or a composition.

    Terms are joined with a lone + or -, and W:term weights one (2:강아지). Dates, places
    and cameras the query names filter the photos (작년 여름 제주, 2023년 도쿄, 아이폰), and its
    words also find photos by file name, folder, keywords and caption.

    Example:

        koclip-search search 작년 여름 제주 바다 + 노을 - 사람 -k 10
    """
    from search import parse_query

    _check_output(as_json, as_paths)
    parse_query(list(query))  # a malformed query fails before the library is opened
    with _open(options.pop("library"), options.pop("model")) as searcher:
        results = searcher.compose(list(query), prompt=not no_prompt, **options)
    _print_results(results, as_json, as_paths)


@main.command("similar", cls=OneLineCommand)
@click.argument("image")
@_query_options
@domain_errors
def similar_command(image: str, as_json: bool, as_paths: bool, **options: Any) -> None:
    """Find photos similar to IMAGE (inside or outside the library); IMAGE itself and its
    exact duplicates are left out.

    Example:

        koclip-search similar ~/Pictures/2023/beach.jpg --under 2024 --paths
    """
    _check_output(as_json, as_paths)
    with _open(options.pop("library"), options.pop("model")) as searcher:
        results = searcher.image(image, **options)
    _print_results(results, as_json, as_paths)


@main.command("info", cls=OneLineCommand)
@_library_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@domain_errors
def info_command(library: str | None, as_json: bool) -> None:
    """Photo count, failed files, model, index type, size on disk, last indexed, and who
    holds the library for writing (a watcher keeping it current, and its last commit)."""
    with _open(library, None) as searcher:
        info = searcher.info()
    if as_json:
        click.echo(json.dumps(info.to_json(), ensure_ascii=False))
    else:
        click.echo(format_info(info))


@main.command("reindex", cls=OneLineCommand)
@_library_option
@click.option(
    "--index",
    "index_type",
    type=click.Choice(INDEX_CHOICES),
    default=AUTO_INDEX,
    show_default=True,
    help="auto: by the library's size, switched by `index` as it grows; flat: exact; hnsw / "
    "ivf-sq8: approximate, for large libraries; ivf-pq: compressed, re-ranked exactly, for "
    "millions of photos. A named type is kept at any size.",
)
@domain_errors
def reindex_command(library: str | None, index_type: str) -> None:
    """Rebuild the FAISS index as another type from the stored vectors (no re-encoding).

    Example:

        koclip-search reindex --index ivf-sq8
    """

    from cli.progress import LineBar
    from search import find_library, reindex

    bar = LineBar(sys.stderr) if sys.stderr.isatty() else None

    def progress(added: int, total: int) -> None:
        if bar is not None and (bar.due(final=added >= total)):
            bar.draw(added, max(total, 1), f"{added:,}/{total:,} vectors added")

    try:
        report = reindex(find_library(library), index_type, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    click.echo(
        f"index: {report.previous_type} -> {report.index_type}, {report.vectors:,} vectors, "
        f"{_human_size(report.size_bytes)}"
    )


# -- formatting -------------------------------------------------------------------------------


def format_table(results: SearchResults) -> str:
    """The terminal table: rank, score, path, size, date (paths shortened to the terminal)."""
    if not len(results):
        return f"no results for {results.query}"
    from search import display_path

    header = ("#", "score", "path", "size", "date")
    rows = [
        (
            str(h.rank),
            "-" if h.score is None else f"{h.score:.3f}",
            display_path(h.path),
            _human_size(h.size),
            _date(h.taken_at),
        )
        for h in results
    ]
    widths = [max(_width(r[i]) for r in (header, *rows)) for i in range(len(header))]
    room = shutil.get_terminal_size((120, 24)).columns - sum(widths) + widths[2] - 8
    widths[2] = max(20, min(widths[2], room))
    lines = []
    for r in (header, *rows):
        cells = [
            _pad(r[0], widths[0], right=True),
            _pad(r[1], widths[1], right=True),
            _pad(_shorten(r[2], widths[2]), widths[2]),
            _pad(r[3], widths[3], right=True),
            r[4],
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_info(info: LibraryInfo) -> str:
    """`info` as aligned `key: value` lines."""
    vectors = "" if info.indexed_vectors is None else f" ({info.indexed_vectors:,} vectors)"
    last = info.last_indexed.strftime("%Y-%m-%d %H:%M") if info.last_indexed else "never"
    counts = f"{info.photos:,} indexed, {info.failed:,} failed"
    roots = [("photos", f"{info.photo_root} — {counts}")]
    if isinstance(info.photo_root, str):  # an object store's root: its URL and endpoint
        roots = [("photo root", str(info.photo_root)), ("photos", counts)]
        if info.endpoint:
            roots.append(("endpoint", info.endpoint))
    pairs = [
        ("library", str(info.library)),
        *roots,
        ("model", f"{info.model} ({info.precision})"),
        ("index", f"{info.index_type}{vectors}, {_index_choice(info)}"),
        ("index memory", _human_size(info.index_memory)),
        ("recall", info.recall_target or "-"),
        ("facts", _facts(info)),
        *(
            [("retrain at", f"{info.retrain_at:,} photos (the next `index` past it retrains)")]
            if info.retrain_at
            else []
        ),
        ("size", _human_size(info.size_bytes)),
        ("excludes", ", ".join(info.excludes) or "none (index --exclude GLOB adds one)"),
        ("last indexed", last),
        ("writer", _writer(info)),
    ]
    return "\n".join(f"{k + ':':<14}{v}" for k, v in pairs)


def _facts(info: LibraryInfo) -> str:
    """What the photos' metadata gave: `1,204 with a place, 1,530 with a camera, ...`."""
    f = info.facts
    text = ", ".join(
        f"{f.get(key, 0):,} with {what}"
        for key, what in (("place", "a place"), ("camera", "a camera"), ("keywords", "keywords"))
    )
    if f.get("unreadable"):
        text += f"; {f['unreadable']:,} with unreadable metadata"
    if f.get("unread"):
        text += f"; {f['unread']:,} not read yet (the next `index` reads them)"
    return text


def _index_choice(info: LibraryInfo) -> str:
    """Whether `index` switches the type by size, and when it next does."""
    if not info.index_automatic:
        return "chosen with `reindex --index` (kept at any size; `reindex` hands it back)"
    if info.switch_at is None:
        return "automatic"
    photos, kind = info.switch_at
    return f"automatic ({kind} past {photos:,} photos)"


def _writer(info: LibraryInfo) -> str:
    """Who holds the library's writer lock: a watcher keeping it current, an indexer, or none."""
    w = info.writer
    if w is None:
        return "none"
    since = datetime.fromtimestamp(w.since).strftime("%Y-%m-%d %H:%M")
    last = (
        datetime.fromtimestamp(w.last_commit).strftime("%Y-%m-%d %H:%M:%S")
        if w.last_commit
        else "nothing yet"
    )
    what = "watcher, keeping it current" if w.kind == "watcher" else "indexer"
    return f"{what} (pid {w.pid}) since {since}; last commit {last}"


def _human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _date(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def _width(text: str) -> int:
    """Terminal columns: Hangul and other wide characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int, right: bool = False) -> str:
    fill = " " * max(0, width - _width(text))
    return fill + text if right else text + fill


def _shorten(text: str, width: int) -> str:
    """Keep the end of a path (the file name matters most), with … in front when cut."""
    if _width(text) <= width:
        return text
    out = ""
    for ch in reversed(text):
        if _width(out) + _width(ch) > width - 1:
            break
        out = ch + out
    return "…" + out
