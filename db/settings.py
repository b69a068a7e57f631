"""What the user chose for a library and every later run must remember: a key/value table,
`settings`, with a JSON value per key. Today one key, `exclude`: the library's exclude
patterns (`index --exclude` adds, `--include` removes; every run and watcher applies them).

The table is made when first written (`CREATE TABLE IF NOT EXISTS`), not by a schema step: a
library without it simply has no settings, an older program never reads it, and a newer
schema version elsewhere does not clash with it. A reader finds it absent and reads the
defaults. `db.rebuild` replaces the run's tables only, so settings outlive `index --rebuild`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from db.errors import LibraryCorruptError

TABLE = "settings"
CREATE = f"CREATE TABLE IF NOT EXISTS {TABLE} (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)"
EXCLUDE = "exclude"


def read_setting(session: Session, key: str) -> Any:
    """The stored value of `key` (decoded JSON), or None where it was never set."""
    has = session.execute(
        text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"),
        {"name": TABLE},
    ).scalar()
    if not has:
        return None
    raw = session.execute(text(f"SELECT value FROM {TABLE} WHERE key = :key"), {"key": key})
    value = raw.scalar()
    if value is None:
        return None
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        raise LibraryCorruptError(f"the library's setting {key!r} is damaged: {value!r}") from None


def write_setting(session: Session, key: str, value: Any) -> None:
    """Store `value` (JSON-serialisable) under `key`, in the caller's (writer's) transaction."""
    session.execute(text(CREATE))
    session.execute(
        text(f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (:key, :value)"),
        {"key": key, "value": json.dumps(value, ensure_ascii=False)},
    )


def library_excludes(session: Session) -> tuple[str, ...]:
    """The library's exclude patterns, in the order they were added (empty if none)."""
    value = read_setting(session, EXCLUDE)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise LibraryCorruptError(f"the library's exclude patterns are damaged: {value!r}")
    return tuple(value)


def store_excludes(session: Session, patterns: Iterable[str]) -> None:
    """Replace the library's exclude patterns (in the caller's writer transaction)."""
    write_setting(session, EXCLUDE, list(dict.fromkeys(patterns)))


def excludes_in_file(db_path: Path) -> tuple[str, ...]:
    """The exclude patterns a database file holds, read as far as it can be (a damaged or
    other-version database that `index --rebuild` is about to replace); () if none can be."""
    if not Path(db_path).is_file():
        return ()
    with contextlib.suppress(sqlite3.Error, ValueError, TypeError):
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            row = conn.execute(f"SELECT value FROM {TABLE} WHERE key = ?", (EXCLUDE,)).fetchone()
        finally:
            conn.close()
        value = json.loads(row[0]) if row else []
        if isinstance(value, list):
            return tuple(p for p in value if isinstance(p, str))
    return ()


def merge_excludes(
    stored: Iterable[str], added: Iterable[str], removed: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the patterns after adding `added` and removing `removed`, in order, duplicates
    dropped; the patterns of `removed` that were not there). A pattern both added and removed
    is removed."""
    removed = tuple(dict.fromkeys(removed))
    current = dict.fromkeys(stored)
    unknown = tuple(p for p in removed if p not in current and p not in set(added))
    merged = dict.fromkeys([*current, *added])
    return tuple(p for p in merged if p not in removed), unknown
