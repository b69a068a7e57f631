"""The manifest: how a library's vectors were made (one row in the database, mirrored in
manifest.json), and the checks of its values. Vectors from another model must not be mixed in.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields

from sqlalchemy import text
from sqlalchemy.orm import Session

from db import vectors
from db.schema import SCHEMA_VERSION, ManifestRow

MANIFEST_NAME = "manifest.json"
# Manifest.index_choice: the type follows the library's size, or was chosen by the user.
INDEX_AUTO = "auto"
INDEX_CHOSEN = "chosen"


@dataclass(frozen=True)
class Manifest:
    """How a library's vectors were made; vectors from another model must not be mixed in."""

    model_id: str  # as given to koclip.load_encoder ("koclip-base" or an absolute path)
    fingerprint: str  # koclip.checkpoint_fingerprint of the weights
    dim: int
    preprocess_version: str  # koclip.preprocess.PREPROCESS_VERSION
    index_type: str  # a key of db.vectors.INDEX_FACTORIES (one of INDEX_TYPES, or registered)
    # relative to the library folder ("..") or absolute, or an object-store URL
    # ("s3://bucket/prefix": see Library.root_url)
    photo_root: str
    # The arithmetic of the towers that made the vectors ("fp32", "bf16", "int8", or several
    # "+"-joined, e.g. "bf16+fp32"); koclip only uses a fast path where it agrees with fp32,
    # so they mix.
    precision: str = "fp32"
    # Whether the index type follows the library's size: INDEX_AUTO, INDEX_CHOSEN (by
    # `reindex --index`), or "" where not recorded (a library from before it was).
    index_choice: str = ""
    # A URL root's endpoint as shown (no user info or query), "" for the store's default.
    endpoint: str = ""
    schema_version: int = SCHEMA_VERSION
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def automatic_index(self) -> bool:
        """Whether `index` may switch the type as the library grows or shrinks. Where the
        choice was not recorded, a type the size rule gives (flat, ivf-sq8, ivf-pq) counts as
        automatic, any other (hnsw) as chosen."""
        if self.index_choice:
            return self.index_choice == INDEX_AUTO
        return self.index_type in vectors.AUTO_LADDER

    def to_json(self) -> str:
        """The manifest.json text."""
        return json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n"


def read_manifest(session: Session) -> Manifest | None:
    """The manifest row as stored, unchecked (None for a library not yet written to)."""
    session.flush()  # a manifest set in this transaction is read back
    # Read as a plain row: a reader of a library written before a column was added cannot
    # add it, and the Manifest default stands in.
    row = session.execute(text("SELECT * FROM manifest WHERE id = 1")).mappings().first()
    if row is None:
        return None
    return Manifest(**{f.name: row[f.name] for f in fields(Manifest) if f.name in row})


def store_manifest(session: Session, manifest: Manifest) -> Manifest:
    """Write the manifest row in the caller's transaction; returns it as stored (this schema
    version, its times set)."""
    now = time.time()
    row = session.get(ManifestRow, 1)
    values = asdict(manifest) | {"schema_version": SCHEMA_VERSION, "updated_at": now}
    if row is None:
        values["created_at"] = now
        session.add(ManifestRow(id=1, **values))
    else:
        sound = isinstance(row.created_at, (int, float))  # a damaged row gets a new one
        values["created_at"] = row.created_at if sound else now
        for key, value in values.items():
            setattr(row, key, value)
    return Manifest(**values)


def add_precision(session: Session, precision: str) -> bool:
    """Name `precision` among those that made the library's vectors ("bf16+fp32"), in the
    caller's transaction; True if the manifest changed."""
    row = session.get(ManifestRow, 1)
    if row is None:
        return False
    names = {p for p in (row.precision or "").split("+") if p}
    if precision in names:
        return False
    row.precision = "+".join(sorted(names | {precision}))
    row.updated_at = time.time()
    return True


def manifest_problems(manifest: Manifest) -> list[str]:
    """What cannot be right in a manifest's values (empty when it is sound)."""
    problems = []
    for name in ("model_id", "fingerprint", "preprocess_version", "photo_root"):
        value = getattr(manifest, name)
        if not isinstance(value, str) or not value:
            problems.append(f"{name} {value!r}")
    if (
        not isinstance(manifest.index_type, str)
        or manifest.index_type not in vectors.INDEX_FACTORIES
    ):
        problems.append(f"unknown index type {manifest.index_type!r}")
    if manifest.index_choice not in ("", INDEX_AUTO, INDEX_CHOSEN):
        problems.append(f"unknown index type choice {manifest.index_choice!r}")
    dim = manifest.dim
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= 65536:
        problems.append(f"dim {dim!r}")
    for name in ("created_at", "updated_at"):
        value = getattr(manifest, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{name} {value!r}")
    return problems
