"""Builders and checks shared by the indexer tests: JPEGs, an indexing run, a library's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import db
from db import vectors
from indexer import IndexOptions, Summary, index_photos


def rgb(seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A blocky random picture: distinct per seed, compressible."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.NEAREST)


def write_jpeg(
    path: Path, seed: int, size: tuple[int, int] = (96, 64), **exif_tags: object
) -> Path:
    """A JPEG; exif_tags: orientation=6, taken="2021:07:04 10:30:00"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    if "orientation" in exif_tags:
        exif[0x0112] = exif_tags["orientation"]
    if "taken" in exif_tags:
        exif.get_ifd(0x8769)[0x9003] = exif_tags["taken"]
    rgb(seed, size).save(path, "JPEG", quality=90, exif=exif)
    return path


def index(root: Path, ckpt: Path | None, **kw: object) -> Summary:
    """One indexing run of `root` with small batches."""
    kw.setdefault("batch_size", 4)
    kw.setdefault("workers", 2)
    return index_photos(root, IndexOptions(model=str(ckpt) if ckpt else None, **kw))


def open_lib(root: Path, library: Path | None = None) -> db.Library:
    """The library of a photo folder, read-only."""
    return db.Library.open(library or root / db.LIBRARY_DIRNAME)


def rows(lib: db.Library) -> dict[str, db.Photo]:
    """Every photo row (embedding loaded) by path."""
    from sqlalchemy import select
    from sqlalchemy.orm import undefer

    with lib.session() as s, s.begin():
        return {p.path: p for p in s.scalars(select(db.Photo).options(undefer(db.Photo.embedding)))}


def assert_consistent(lib: db.Library) -> None:
    """FAISS file ids == database ids, no duplicates, every embedding a unit vector."""
    index = lib.load_index()
    ids = vectors.index_ids(index)
    assert len(ids) == len(set(ids.tolist()))
    assert sorted(ids.tolist()) == lib.photo_ids().tolist()
    with lib.session() as s, s.begin():
        for _ids, vecs in db.embeddings.iter_embeddings(s):
            np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)
