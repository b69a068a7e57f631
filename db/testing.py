"""Libraries without a model behind them, for the tests and the benchmarks (no network).

A synthetic library holds vectors written through db/ as they are, under a manifest that
names no checkpoint ("synthetic", fingerprint "0"): what the search, index-growth and
benchmark code needs to exercise the library without encoding a single photo.
"""

from __future__ import annotations

from typing import Any

from db.manifest import Manifest

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
