"""The on-disk cache of query text embeddings: one SQLite file outside any library, shared by
every library and process of the user (search puts it in koclip's cache folder).

db owns the project's SQLite files; this one stores vectors it is handed and knows nothing of
the model that made them.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np

TEXT_CACHE_FILENAME = "text-embeddings.sqlite3"


class DiskTextCache:
    """Text embeddings kept across processes, so a repeated one-shot query (paging with
    --offset, a re-run) needs no text tower at all. Best effort: any SQLite error is a miss.

    Keyed by the model's fingerprint, the prompt template and the (NFC) text; the vectors are
    little-endian float32 rows."""

    MAX_ROWS = 20_000  # ~40 MB at dim 512

    def __init__(self, path: Path) -> None:
        self.path = path  # created on first use
        self._conn: sqlite3.Connection | None = None
        self._broken = False
        # One connection shared by the Searcher's threads, one statement at a time.
        self._lock = threading.RLock()

    def _connect(self) -> sqlite3.Connection | None:
        if self._conn is None and not self._broken:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, timeout=1.0, isolation_level=None, check_same_thread=False
                )
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS embeddings (fingerprint TEXT, prompt TEXT, "
                    "text TEXT, vector BLOB, PRIMARY KEY (fingerprint, prompt, text))"
                )
                self._conn = conn
            except (sqlite3.Error, OSError):
                self._broken = True
        return self._conn

    def get(self, fingerprint: str, prompt: str, text: str) -> np.ndarray | None:
        """The stored vector, or None."""
        with self._lock:
            conn = self._connect()
            if conn is None:
                return None
            try:
                row = conn.execute(
                    "SELECT vector FROM embeddings WHERE fingerprint=? AND prompt=? AND text=?",
                    (fingerprint, prompt, text),
                ).fetchone()
            except sqlite3.Error:
                return None
        return None if row is None else np.frombuffer(row[0], "<f4").astype(np.float32)

    def put(self, fingerprint: str, items: list[tuple[str, str, np.ndarray]]) -> None:
        """Store (prompt, text, vector) items, dropping the oldest rows past MAX_ROWS."""
        with self._lock:
            conn = self._connect()
            if conn is None:
                return
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                    [(fingerprint, p, t, np.asarray(v, "<f4").tobytes()) for p, t, v in items],
                )
                conn.execute(
                    "DELETE FROM embeddings WHERE rowid <= (SELECT MAX(rowid) FROM embeddings) - ?",
                    (self.MAX_ROWS,),
                )
            except sqlite3.Error:
                pass

    def close(self) -> None:
        """Close the connection (reopened on next use)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
