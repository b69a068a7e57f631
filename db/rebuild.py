"""`index --rebuild` without a moment of an empty library: the new vectors are built in a
staging library (a folder inside the library's own), and only once they are all committed do
they replace the old rows, in one SQLite transaction. Until then every reader searches the
old vectors; an interrupted rebuild leaves them as they were, and the same command resumes the
staging library where it stopped.

The staging library numbers its photos after every id the library ever gave (its AUTOINCREMENT
counter starts there), so an index file of the old vectors can never name a new photo: a
reader that meets one (a crash between the row swap and the index file) drops its ids as gone
and searches the new rows exactly, and the next writer reconciles the file.

What the rebuild must not touch stays: the set-aside journal (its photos are outside the
photo folder) keeps its rows.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

from sqlalchemy import text

from db import lexical
from db.engine import write_errors
from db.library import Library

STAGING_DIRNAME = "rebuilding"
# The tables that hold what a run of the indexer makes; the rest (manifest, set-aside
# journal) belongs to the library.
RUN_TABLES = ("photos", "failures")


def staging_dir(library_dir: Path) -> Path:
    return Path(library_dir) / STAGING_DIRNAME


def open_staging(library: Library) -> Library:
    """The staging library of `library` (made if needed), its photo ids numbered after every
    id `library` ever gave. The caller holds `library`'s lock, which covers both."""
    staging = Library.create(staging_dir(library.directory))
    with write_errors(staging.directory):
        with library.session() as s, s.begin():
            given = s.execute(
                text("SELECT seq FROM sqlite_sequence WHERE name = 'photos'")
            ).scalar()
        with staging.session() as s, s.begin():
            current = s.execute(
                text("SELECT seq FROM sqlite_sequence WHERE name = 'photos'")
            ).scalar()
            if given and (current or 0) < given:
                s.execute(text("DELETE FROM sqlite_sequence WHERE name = 'photos'"))
                s.execute(
                    text("INSERT INTO sqlite_sequence(name, seq) VALUES ('photos', :seq)"),
                    {"seq": int(given)},
                )
    return staging


def apply(library: Library, staging: Library) -> None:
    """Replace `library`'s rows with the staging library's in one transaction, then its index
    file, then remove the staging folder. Hold the lock. Safe to repeat after a crash."""
    manifest = staging.manifest()
    if manifest is None:
        raise ValueError("the staging library has no manifest")
    index_file = staging.index_path(manifest.index_type)
    staged_db = staging.db_path
    with staging.session() as s, s.begin():
        tables = [t for t in RUN_TABLES] + ([lexical.TABLE] if _has(s, lexical.TABLE) else [])
    staging.close()
    old = library.manifest(check=False)
    photo_root = old.photo_root if old is not None else manifest.photo_root
    with write_errors(library.directory):
        # On the driver's connection: SQLite attaches outside a transaction only, and the
        # rows, the failures, the words and the manifest must change in one.
        raw = library.engine.raw_connection()
        try:
            conn = raw.driver_connection
            conn.execute("ATTACH DATABASE ? AS staged", (os.fspath(staged_db),))
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for table in [*tables, "manifest"]:
                        _copy_table(conn, table)
                    conn.execute("UPDATE main.manifest SET photo_root = ?", (photo_root,))
                    # The journal's vectors are the old run's: a photo restored later is
                    # encoded again (db.journal.drop_journal_vectors).
                    conn.execute("UPDATE main.set_aside SET embedding = x''")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            finally:
                conn.execute("DETACH DATABASE staged")
        finally:
            raw.close()
        if index_file.exists():
            os.replace(index_file, library.index_path(manifest.index_type))
        library.write_manifest_json()
        library.remove_leftovers()
        shutil.rmtree(staging.directory, ignore_errors=True)


def discard(library_dir: Path) -> None:
    """Remove a staging folder (a rebuild given up for another model, or already applied)."""
    shutil.rmtree(staging_dir(library_dir), ignore_errors=True)


def _copy_table(conn: sqlite3.Connection, table: str) -> None:
    columns = [row[1] for row in conn.execute(f"PRAGMA main.table_info({table})")]
    if table == lexical.TABLE:
        columns = ["rowid", *columns]
    names = ", ".join(columns)
    conn.execute(f"DELETE FROM main.{table}")
    conn.execute(f"INSERT INTO main.{table} ({names}) SELECT {names} FROM staged.{table}")


def _has(session, table: str) -> bool:  # noqa: ANN001
    found = session.execute(
        text("SELECT 1 FROM sqlite_master WHERE name = :name"), {"name": table}
    ).scalar()
    return bool(found)
