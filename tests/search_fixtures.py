"""Builders for search tests: a photo folder indexed by the real indexer, and a reference.

The reference is brute force in numpy over every embedding the library stores, with query
vectors from the same tiny koclip encoder: what search must agree with.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

import db
from db.testing import synthetic_manifest

# (relative path, EXIF DateTimeOriginal or None -> mtime, colour)
PHOTOS = [
    ("2023/여행/바다.jpg", datetime(2023, 5, 1, 10, 0), (20, 90, 200)),
    ("2023/여행/노을.jpg", datetime(2023, 5, 2, 19, 30), (250, 120, 40)),
    ("2023/여행/산.jpg", datetime(2023, 5, 3, 9, 0), (40, 140, 60)),
    ("2023/여행/강아지.png", None, (180, 160, 120)),
    ("2023/여행ab/옆폴더.jpg", datetime(2023, 6, 1, 12, 0), (120, 120, 120)),
    ("2023/집/고양이.jpg", datetime(2023, 12, 24, 20, 0), (90, 80, 70)),
    ("2023/집/소파.jpg", datetime(2023, 12, 25, 8, 0), (160, 40, 140)),
    ("2024/바다/파도.jpg", datetime(2024, 7, 15, 14, 0), (10, 60, 160)),
    ("2024/바다/모래.jpg", datetime(2024, 7, 16, 15, 0), (230, 210, 150)),
    ("2024/바다/사람들.jpg", datetime(2024, 7, 17, 16, 0), (200, 150, 130)),
    ("2024/자동차.jpg", datetime(2024, 1, 2, 3, 4), (220, 20, 30)),
    ("2024/밤.jpg", datetime(2024, 2, 3, 23, 0), (10, 10, 30)),
    ("top.jpg", datetime(2022, 1, 1, 0, 0), (250, 250, 250)),
]
DUPLICATE_OF = "2023/여행/바다.jpg"
DUPLICATE = "2024/바다/바다-복사본.jpg"
BROKEN = "2024/깨진.jpg"
MTIME = datetime(2021, 3, 4, 5, 6, 7)


def _image(colour: tuple[int, int, int], seed: int) -> Image.Image:
    """A colour with a gradient and noise, so photos differ beyond their mean."""
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    base = np.asarray(colour, np.float32)[None, None, :]
    ramp = np.linspace(-40, 40, w, dtype=np.float32)[None, :, None] * (seed % 3 - 1)
    noise = rng.normal(0, 12 + 4 * (seed % 5), (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(base + ramp + noise, 0, 255).astype(np.uint8))


def write_photos(root: Path) -> None:
    """The test photo folder: Korean folder and file names, EXIF dates, a duplicate, a broken file."""
    for seed, (rel, taken, colour) in enumerate(PHOTOS):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = _image(colour, seed)
        if taken is None:
            image.save(path)
            stamp = MTIME.timestamp()
            os.utime(path, (stamp, stamp))
        else:
            exif = Image.Exif()
            exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")
            image.save(path, exif=exif)
    shutil.copyfile(root / DUPLICATE_OF, root / DUPLICATE)
    (root / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def index_folder(root: Path, checkpoint: Path) -> Path:
    """Index `root` with the real indexer; returns the library folder."""
    from indexer import IndexOptions, index_photos

    index_photos(root, IndexOptions(model=str(checkpoint), workers=2, batch_size=8))
    return db.default_library_dir(root)


_BUILT: dict[Path, Path] = {}


def indexed_photos(tmp_path_factory, checkpoint: Path) -> Path:
    """The test photo folder, indexed; built once per session and shared by every test module."""
    if checkpoint not in _BUILT:
        root = tmp_path_factory.mktemp("photos")
        write_photos(root)
        index_folder(root, checkpoint)
        _BUILT[checkpoint] = root
    return _BUILT[checkpoint]


@dataclass
class Reference:
    """Every stored embedding, with its row, for brute-force answers."""

    ids: np.ndarray
    vectors: np.ndarray
    rows: dict[int, db.Photo]
    root: Path

    @classmethod
    def load(cls, library_dir: Path) -> Reference:
        """Read every row and embedding of a library."""
        with db.Library.open(library_dir) as lib:
            root = lib.photo_root()
            with lib.session() as s, s.begin():
                chunks = list(db.embeddings.iter_embeddings(s))
                rows = db.photos.photos_by_id(s, np.concatenate([c[0] for c in chunks]))
        ids = np.concatenate([c[0] for c in chunks])
        return cls(ids, np.concatenate([c[1] for c in chunks]), rows, root)

    def id_of(self, rel: str) -> int:
        """Photo id of a path relative to the photo root."""
        return next(i for i, r in self.rows.items() if r.path == rel)

    def scores(self, query: np.ndarray) -> dict[int, float]:
        """Cosine of `query` with every photo, by id."""
        return dict(zip(self.ids.tolist(), (self.vectors @ query).tolist(), strict=True))

    def ranking(self, query: np.ndarray, keep=lambda row: True) -> list[tuple[int, float]]:
        """(id, score) of every photo `keep` accepts, best first."""
        pairs = [(i, s) for i, s in self.scores(query).items() if keep(self.rows[i])]
        return sorted(pairs, key=lambda p: (-p[1], p[0]))


def assert_matches(
    hits, expected: list[tuple[int, float]], scores: dict[int, float], tol: float = 1e-5
) -> None:
    """Rank by rank the reference's scores, each hit scoring in the reference what it claims.

    Ids may differ from the reference only between photos whose scores tie within `tol`.
    """
    assert len(hits) == len(expected), (len(hits), len(expected))
    for hit, (_, score) in zip(hits, expected, strict=True):
        assert abs(hit.score - score) <= tol, (hit, score)
        assert abs(scores[hit.photo_id] - hit.score) <= tol, (hit, scores[hit.photo_id])
    found = [h.photo_id for h in hits]
    assert len(set(found)) == len(found)


def synthetic_photos(vecs: np.ndarray, folders: list[str], start: int = 0) -> list[db.Photo]:
    """Rows for `vecs` without photos behind them: photo i is `folders[i % n]/i.jpg`, taken
    every 7 hours from 2020-01-01, content hash `h<i>`."""
    return [
        db.Photo(
            path=f"{folders[i % len(folders)]}/{i:05d}.jpg",
            size=1,
            mtime_ns=0,
            content_hash=f"h{i}",
            width=1,
            height=1,
            taken_at=datetime(2020, 1, 1) + timedelta(hours=7 * i),
            taken_at_source="exif",
            indexed_at=0.0,
            embedding=db.vector_to_blob(v),
        )
        for i, v in enumerate(vecs, start)
    ]


def synthetic_library(root: Path, vecs: np.ndarray, folders: list[str]) -> np.ndarray:
    """A library of `vecs` written through db/ (no model, `synthetic_photos` rows) with a flat
    index saved; returns the photo ids in row order."""
    library_dir = db.default_library_dir(root)
    with db.LibraryLock(library_dir), db.Library.create(library_dir) as lib:
        with lib.session() as s, s.begin():
            photo_root = db.relative_photo_root(library_dir, root)
            lib.set_manifest(s, synthetic_manifest(vecs.shape[1], photo_root=photo_root))
            s.add_all(synthetic_photos(vecs, folders))
        lib.write_manifest_json()
        lib.save_index(lib.build_index())
    with db.Library.open(library_dir) as lib:
        return lib.photo_ids()


def one_line_error(result, exit_code: int = 2) -> str:
    """The one `Error: ...` line a CliRunner result reported, after checking the exit code and
    that it was reported (SystemExit), not a traceback."""
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # reported, no traceback
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def ok_json(response) -> dict:
    """A web response's JSON body, after checking it is a 200."""
    assert response.status_code == 200, response.text
    return response.json()


def error_json(response, status: int, code: str) -> str:
    """A web error's message, after checking its status and its `{"error", "code"}` body."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code"}, body
    assert body["code"] == code, body
    assert "Traceback" not in body["error"]
    return body["error"]
