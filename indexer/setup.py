"""Before any file is read: open (or create) the library, check the model, load the encoder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from db import (
    Library,
    LibraryCorruptError,
    Manifest,
    ManifestMismatchError,
    SchemaVersionError,
    photo_writes,
    photos,
    relative_photo_root,
    write_errors,
)
from db.engine import DB_NAME
from db.errors import index_command
from db.journal import drop_journal_vectors, put_back_journal, save_journal
from db.manifest import INDEX_AUTO, INDEX_CHOSEN, manifest_problems
from db.settings import excludes_in_file, store_excludes
from db.vectors import DEFAULT_INDEX_TYPE, INDEX_FACTORIES
from indexer.aside import journal_rows_from_folder
from koclip import Encoder, checkpoint_fingerprint, load_encoder
from koclip.images.preprocess import PREPROCESS_VERSION

DEFAULT_MODEL = "koclip-base"


def open_for_indexing(directory: Path, *, rebuild: bool) -> Library:
    """Open the library for writing (the caller holds its lock); --rebuild replaces an old
    schema or a damaged database file with an empty one, keeping the set-aside journal (what
    it still holds, without vectors: restored photos are encoded again)."""
    try:
        library = Library.create(directory)
    except (SchemaVersionError, LibraryCorruptError):
        if not rebuild:
            raise
        return _reset(directory)
    if rebuild and not library.is_intact():
        library.close()
        return _reset(directory)
    return library


def _reset(directory: Path) -> Library:
    """A new empty database with the old one's set-aside journal: its rows as far as they can
    be read, and a row for every other file in the default set-aside folder."""
    saved = save_journal(Path(directory) / DB_NAME)
    excludes = excludes_in_file(Path(directory) / DB_NAME)
    first_id = max([r["id"] for r in saved.rows] + [k["keeper_id"] for k in saved.kept] + [0])
    known = {r["path"] for r in saved.rows}
    saved.rows.extend(journal_rows_from_folder(Path(directory), known, first_id + 1))
    library = Library.reset(directory)
    put_back_journal(library, saved)
    if excludes:  # what the user chose to leave out stays out
        with library.session() as s, s.begin():
            store_excludes(s, excludes)
    return library


def prepare(
    library: Library,
    photo_root: Path | str,
    model: str | None,
    *,
    batch_size: int,
    rebuild: bool,
    encoder: Encoder | None = None,
    precision: str | None = None,
    endpoint: str = "",
) -> Encoder:
    """Refuse another model's vectors (unless rebuilding), load the vision tower, write the manifest.

    `encoder`, if given, is used instead of loading `model` (a long-lived process keeps one);
    else the tower is loaded in `precision` (see `koclip.load_encoder`). A `photo_root` that
    is an object-store URL is stored as it is, with its `endpoint` (as shown: no secrets).
    """
    old = _old_manifest(library, rebuild)
    model = encoder.model_id if encoder else model or (old.model_id if old else DEFAULT_MODEL)
    has_photos = _photo_count(library) > 0
    if old is not None and has_photos and not rebuild:
        # Cheap: the fingerprint is read from the files, no weights are loaded.
        fingerprint = encoder.fingerprint if encoder else checkpoint_fingerprint(model)
        if fingerprint != old.fingerprint or old.preprocess_version != PREPROCESS_VERSION:
            raise ManifestMismatchError(_mismatch_message(old, model, fingerprint))
    encoder = encoder or load_encoder(
        model, ("vision",), precision=precision, batch_size=batch_size
    )
    same_vectors = old is not None and has_photos and not rebuild
    same_vectors = same_vectors and old.fingerprint == encoder.fingerprint
    new = Manifest(
        model_id=encoder.model_id,
        fingerprint=encoder.fingerprint,
        dim=encoder.dim,
        preprocess_version=PREPROCESS_VERSION,
        index_type=old.index_type if old else DEFAULT_INDEX_TYPE,
        photo_root=(
            photo_root
            if isinstance(photo_root, str)
            else relative_photo_root(library.directory, photo_root)
        ),
        # The precisions that made the stored vectors: this run's is added by the writer when
        # it stores one (a watcher with nothing to encode relabels nothing).
        precision=old.precision if same_vectors else encoder.precision,
        # A new library's type follows its size; an older one's unrecorded choice is settled.
        index_choice=_index_choice(old),
        endpoint=endpoint,
    )
    if rebuild or old is None or _differs(old, new):
        with write_errors(library.directory), library.session() as s, s.begin():
            if rebuild or (old is not None and old.fingerprint != new.fingerprint):
                # Every vector goes (an empty library may switch models freely).
                photo_writes.delete_everything(s)
                drop_journal_vectors(s)  # photos set aside come back encoded anew
            library.set_manifest(s, new)
        library.write_manifest_json()
    return encoder


def _old_manifest(library: Library, rebuild: bool) -> Manifest | None:
    """The library's manifest; one damaged by hand is repaired where the row can be trusted
    (index type, dim, times are rewritten), else only --rebuild may go on."""
    try:
        return library.manifest()
    except LibraryCorruptError:
        if rebuild:
            return None  # every vector goes anyway
        old = library.manifest(check=False)
    if any(
        "index type" not in p and not p.startswith(("dim ", "created_at", "updated_at"))
        for p in manifest_problems(old)
    ):
        raise LibraryCorruptError(
            f"the manifest in {library.db_path} is damaged ({'; '.join(manifest_problems(old))}); "
            f"the model of its vectors is unknown: run `{index_command(library.directory, rebuild=True)}`"
        )
    index_type = old.index_type if old.index_type in INDEX_FACTORIES else DEFAULT_INDEX_TYPE
    choice = old.index_choice if old.index_choice in (INDEX_AUTO, INDEX_CHOSEN) else ""
    # dim 0 differs from any model's: the row is rewritten with the encoder's.
    return dataclasses.replace(
        old, index_type=index_type, index_choice=choice, dim=0, created_at=0.0, updated_at=0.0
    )


def _index_choice(old: Manifest | None) -> str:
    """INDEX_AUTO for a new library; else the old one's, settled where it was not recorded."""
    if old is None:
        return INDEX_AUTO
    return old.index_choice or (INDEX_AUTO if old.automatic_index else INDEX_CHOSEN)


def _differs(old: Manifest, new: Manifest) -> bool:
    keep = {
        "created_at": old.created_at,
        "updated_at": old.updated_at,
        "schema_version": old.schema_version,
    }
    return dataclasses.replace(new, **keep) != old


def _photo_count(library: Library) -> int:
    with library.session() as s, s.begin():
        return photos.photo_count(s)


def _mismatch_message(old: Manifest, model: str, fingerprint: str) -> str:
    if old.preprocess_version != PREPROCESS_VERSION:
        what = (
            f"preprocessing {old.preprocess_version!r} (this program uses {PREPROCESS_VERSION!r})"
        )
    else:
        what = f"model {old.model_id!r} (weights {old.fingerprint[:12]})"
    return (
        f"this library was indexed with {what}; {model!r} (weights {fingerprint[:12]}) would mix "
        f"incompatible vectors. Index with --model {old.model_id!r}, or pass --rebuild to "
        "re-encode every photo"
    )
