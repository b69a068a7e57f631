"""Libraries without a model behind them, for the tests and the benchmarks (no network).

A synthetic library holds vectors written through db/ as they are, under a manifest that
names no checkpoint ("synthetic", fingerprint "0"): what the search, index-growth and
benchmark code needs to exercise the library without encoding a single photo.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from db.manifest import Manifest

# What `set_facts` gives a photo: (place names top-down or None, camera make, camera model,
# keywords).
Facts = tuple[Sequence[str] | None, str | None, str | None, Sequence[str]]

SYNTHETIC_MODEL = "synthetic"


def synthetic_manifest(dim: int, **overrides: Any) -> Manifest:
    """A flat library's manifest for `dim`-d vectors no model made, its photos in the folder
    above the library's (`photo_root` ".."); `overrides` replace any field."""
    fields: dict[str, Any] = {
        "model_id": SYNTHETIC_MODEL,
        "fingerprint": "0",
        "dim": dim,
        "preprocess_version": "-",
        "index_type": "flat",
        "photo_root": "..",
    }
    return Manifest(**(fields | overrides))


def set_facts(library: Path, facts_of: Callable[[str], Facts]) -> None:
    """Give each photo of `library` the facts `facts_of(its relative path)` says, as the
    indexer stores read metadata (the columns and the photo's words), under the writer lock:
    for the search side's tests and benches without photos that carry metadata."""
    from db import lexical
    from db.library import Library
    from db.lock import LibraryLock
    from db.photo_writes import update_photos
    from db.schema import Photo

    with (
        LibraryLock(library),
        Library.open(library, readonly=False) as lib,
        lib.session() as s,
        s.begin(),
    ):
        values, words = [], []
        for pid, rel in [(row.id, row.path) for row in s.query(Photo)]:
            path, make, model, keywords = facts_of(rel)
            place = " ".join(path) if path else None
            values.append(
                {
                    "id": pid,
                    "place": place,
                    "place_path": json.dumps(path, ensure_ascii=False) if path else None,
                    "camera_make": make,
                    "camera_model": model,
                    "keywords": "\n".join(keywords) or None,
                    "facts": 1,
                }
            )
            words.append(lexical.PhotoWords.of(pid, rel, keywords=keywords, place=place))
        update_photos(s, values)
        lexical.put(s, words)
