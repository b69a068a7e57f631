"""Schema upgrades: one ordered list of steps, one per schema version.

A step lists the columns its version added (each added in O(1) by `ALTER TABLE ... ADD
COLUMN` with a default that means "not known yet") and, optionally, a backfill: SQL that fills
them from what the database already holds, run once in the same transaction. What needs the
files themselves (the perceptual hashes of schema 3) is left NULL for the next `index` run,
which fills the rows that lack it without encoding them again.

The writer (`upgrade`) adds every column it finds missing, runs the backfills of the versions
above the stored one and records SCHEMA_VERSION. A reader may not write: `reader_views` gives
it temporary views of the tables with the missing columns at their defaults, so it reads the
stored rows as they are, and an older library stays searchable until the next `index`.

A new schema version is one more `Step` here, with SCHEMA_VERSION and the table in db.schema
changed to match: e.g. `Step(5, (Column("photos", "altitude", "FLOAT"), ...), backfill=...)`;
a table or index it adds goes in its `creates` (an index of a mapped table also in db.schema).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db import lexical
from db.schema import SCHEMA_VERSION


@dataclass(frozen=True)
class Column:
    """One column a step adds: `ALTER TABLE {table} ADD COLUMN {name} {kind}`."""

    table: str
    name: str
    kind: str  # SQLite type and constraints, e.g. "BLOB" or "VARCHAR NOT NULL DEFAULT 'fp32'"
    default: str = "NULL"  # what a reader sees in an older row (an SQL literal)


@dataclass(frozen=True)
class Step:
    """What schema `version` added to the one before it."""

    version: int
    columns: tuple[Column, ...]
    # SQL statements filling the new columns from the database alone (no file is read), run
    # by the writer once, in the upgrade's transaction, when the stored version is below.
    backfill: tuple[str, ...] = ()
    # SQL statements making the tables and indexes it added, each "IF NOT EXISTS" (a new
    # library gets its mapped tables from create_all, but not a virtual table): run by the
    # writer on every open, before the backfills.
    creates: tuple[str, ...] = ()


# Schema 4's facts columns, in photos and in the set-aside journal that holds photo rows.
_FACTS = (
    ("lat", "FLOAT"), ("lon", "FLOAT"), ("place", "VARCHAR"), ("place_path", "VARCHAR"),
    ("camera_make", "VARCHAR"), ("camera_model", "VARCHAR"), ("lens", "VARCHAR"),
    ("keywords", "VARCHAR"), ("caption", "VARCHAR"), ("facts", "INTEGER"),
    ("facts_problems", "VARCHAR"),
)  # fmt: skip

STEPS = (
    # photos.disk_path: the name as the file system spells it, when it is not the NFC key.
    Step(2, (Column("photos", "disk_path", "BLOB"),)),
    # Perceptual fingerprints (the next index run fills them, decoding only); the manifest's
    # precision and index choice, whose defaults mean "as before" (so an older program still
    # reads a library that has them: they came without a version of their own).
    Step(
        3,
        (
            Column("photos", "phash", "INTEGER"),
            Column("photos", "pthumb", "BLOB"),
            Column("manifest", "precision", "VARCHAR NOT NULL DEFAULT 'fp32'", "'fp32'"),
            Column("manifest", "index_choice", "VARCHAR NOT NULL DEFAULT ''", "''"),
        ),
    ),
    # Facts from the photos' metadata (the next index run reads them where `facts` is NULL,
    # metadata only), the place index, and the photos' words (db.lexical), which that run
    # fills for every photo; a deleted photo row takes its words with it (a trigger). The
    # set-aside journal keeps a photo's facts while it is aside.
    Step(
        4,
        tuple(Column(t, name, kind) for t in ("photos", "set_aside") for name, kind in _FACTS),
        creates=(
            "CREATE INDEX IF NOT EXISTS ix_photos_place ON photos (place)",
            lexical.CREATE,
            lexical.FORGET_TRIGGER,
        ),
    ),
    # Photo roots in object storage: a photo's ETag (NULL for local files), and the store's
    # endpoint in the manifest ("" for none: AWS itself, or a local root).
    Step(
        5,
        (
            Column("photos", "etag", "VARCHAR"),
            Column("manifest", "endpoint", "VARCHAR NOT NULL DEFAULT ''", "''"),
        ),
    ),
)
assert STEPS[-1].version == SCHEMA_VERSION, "a schema version without its migration step"
# Versions this program upgrades (the writer) or reads as they are (a reader); any other is
# refused with SchemaVersionError (index --rebuild).
MIGRATABLE = frozenset(range(1, SCHEMA_VERSION))

# Runs one SQL statement with its parameters and returns its rows (iterable, with fetchone):
# sqlite3.Connection.execute, or SQLAlchemy's Connection.exec_driver_sql.
Execute = Callable[..., Any]


def _missing(execute: Execute) -> dict[str, tuple[list[str], list[Column]]]:
    """{table: (its columns, the step columns it lacks)} for the tables that lack some."""
    out: dict[str, tuple[list[str], list[Column]]] = {}
    for table in dict.fromkeys(c.table for step in STEPS for c in step.columns):
        present = [r[1] for r in execute(f"PRAGMA main.table_info({table})")]
        lacking = [
            c for s in STEPS for c in s.columns if c.table == table and c.name not in present
        ]
        if present and lacking:  # an absent table is made whole by create_all
            out[table] = (present, lacking)
    return out


def stored_version(execute: Execute) -> int | None:
    """The library's schema version (None while it has no manifest row)."""
    has_manifest = execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'manifest'"
    ).fetchone()
    if not has_manifest:
        return None
    row = execute("SELECT schema_version FROM manifest WHERE id = 1").fetchone()
    return None if row is None else row[0]


def upgrade(execute: Execute) -> None:
    """Bring a library to SCHEMA_VERSION through a writer's connection, inside the caller's
    transaction (nothing to do for a current one)."""
    for table, (_, lacking) in _missing(execute).items():
        for column in lacking:
            execute(f"ALTER TABLE {table} ADD COLUMN {column.name} {column.kind}")
    for step in STEPS:
        for statement in step.creates:
            execute(statement)
    version = stored_version(execute)
    if version is None or version == SCHEMA_VERSION:
        return
    for step in STEPS:
        if step.version > version:
            for statement in step.backfill:
                execute(statement)
    execute("UPDATE manifest SET schema_version = ? WHERE id = 1", (SCHEMA_VERSION,))


def reader_views(execute: Execute) -> None:
    """On a reader's connection to an older library: temporary views that add the missing
    columns at their defaults (they shadow the tables for this connection only)."""
    for table, (present, lacking) in _missing(execute).items():
        names = [f'"{c}"' for c in present] + [f"{c.default} AS {c.name}" for c in lacking]
        execute(
            f"CREATE TEMP VIEW IF NOT EXISTS {table} AS SELECT {', '.join(names)} FROM main.{table}"
        )
    if not _has_table(execute, "main", lexical.TABLE):
        # No words stored yet: an empty table of this connection's own, so lexical lookups
        # find nothing rather than fail.
        execute(lexical.CREATE.replace(f"EXISTS {lexical.TABLE}", f"EXISTS temp.{lexical.TABLE}"))


def _has_table(execute: Execute, schema: str, name: str) -> bool:
    found = execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE name = ?", (name,)).fetchone()
    return found is not None
