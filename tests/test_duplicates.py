"""Duplicate finding: perceptual hashes at index time, the three kinds, the CLI, set-aside."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import db
from cli.main import main
from indexer.aside import SetAsideError, restore, set_aside
from koclip.images.preprocess import open_image
from search.duplicates import DuplicateOptions, find_duplicates
from tests.duplicates_fixtures import frame, photo_files, scene, write_rendition, write_set
from tests.indexer_fixtures import assert_consistent, index, open_lib, rows

N_SCENES = 40


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    """The generated set, indexed once: (root, truth)."""
    root = tmp_path_factory.mktemp("dupes") / "photos"
    truth = write_set(root, N_SCENES)
    copy = root / "copies" / "scene001-copy.jpg"
    copy.parent.mkdir()
    shutil.copy2(root / "scene001" / "original.jpg", copy)
    truth["copies/scene001-copy.jpg"] = "s1"
    index(root, tiny_checkpoint)
    return root, truth


def _pairs(groups, kinds) -> set[tuple[str, str]]:
    out = set()
    for g in groups:
        if g.kind in kinds:
            out |= {
                tuple(sorted(p)) for p in itertools.combinations([x.relpath for x in g.photos], 2)
            }
    return out


def test_same_picture_precision_and_recall(generated) -> None:
    root, truth = generated
    with open_lib(root) as lib:
        groups = find_duplicates(lib, DuplicateOptions())
    found = _pairs(groups, {"identical", "same"})
    true = {
        tuple(sorted(p)) for p in itertools.combinations(truth, 2) if truth[p[0]] == truth[p[1]]
    }
    hits = len(found & true)
    precision, recall = hits / max(1, len(found)), hits / len(true)
    print(f"same picture: precision {precision:.3f}, recall {recall:.3f} over {len(true)} pairs")
    assert precision >= 0.95 and recall >= 0.9, (precision, recall, sorted(found - true)[:5])


def test_kinds_keeper_and_json(generated) -> None:
    root, truth = generated
    result = CliRunner().invoke(main, ["duplicates", "--library", str(root), "--json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.output)["groups"]
    assert {g["kind"] for g in groups} <= {"identical", "same", "similar"}
    sizes = [len(g["photos"]) for g in groups]
    assert sizes == sorted(sizes, reverse=True)
    for g in groups:
        assert set(g) == {"kind", "keep", "reason", "photos"}
        assert g["keep"] == g["photos"][0]["path"]
        for p in g["photos"]:
            assert set(p) == {"path", "width", "height", "bytes", "taken_at", "similarity"}
        pixels = [p["width"] * p["height"] for p in g["photos"]]
        assert pixels[0] == max(pixels)
    scene1 = next(g for g in groups if any("scene001/original" in p["path"] for p in g["photos"]))
    assert scene1["kind"] == "same"  # the copy joins its renditions
    identical = CliRunner().invoke(
        main, ["duplicates", "--library", str(root), "--json", "--kind", "identical"]
    )
    only = json.loads(identical.output)["groups"]
    assert [sorted(Path(p["path"]).name for p in g["photos"]) for g in only] == [
        ["original.jpg", "scene001-copy.jpg"]
    ]
    assert all(p["similarity"] == 1.0 for p in only[0]["photos"])
    under = CliRunner().invoke(
        main, ["duplicates", "--library", str(root), "--json", "--under", "scene002"]
    )
    assert all(
        "/scene002/" in p["path"] for g in json.loads(under.output)["groups"] for p in g["photos"]
    )


def test_keeper_order_and_reason() -> None:
    from datetime import datetime

    from search.duplicates import DuplicatePhoto, keeper_reason

    def photo(w, h, size, day, path):
        return DuplicatePhoto(0, path, path, w, h, size, datetime(2024, 1, day), 1.0)

    assert keeper_reason([photo(20, 10, 5, 1, "a"), photo(10, 10, 9, 1, "b")]).startswith("most")
    assert keeper_reason([photo(10, 10, 9, 2, "b"), photo(10, 10, 5, 1, "a")]).startswith("largest")
    assert keeper_reason([photo(10, 10, 5, 1, "b"), photo(10, 10, 5, 2, "a")]) == "taken first"


def test_renditions_hash_close_and_strangers_far(tmp_path: Path) -> None:
    from koclip.images.perceptual import hamming, phash, residual, thumbnail

    original = frame(scene(7))
    other = frame(scene(8))
    h0, t0 = phash(original), thumbnail(original)
    for kind in ("resized", "png", "exif-rotated", "bordered", "brighter"):
        img = open_image(write_rendition(original, kind, tmp_path / f"{kind}.jpg"))
        assert hamming(h0, phash(img)) <= 16, kind
        assert residual(t0, thumbnail(img)) <= 0.45, kind
    assert hamming(h0, phash(other)) > 16 or residual(t0, thumbnail(other)) > 0.45


def test_batched_alignment_is_the_per_pair_one() -> None:
    """`residuals` (every pair at once, crops from matrices) against `residual` (PIL crops,
    one pair at a time): the same crops to the pixel, the same values, the same decisions."""
    import numpy as np

    from koclip.images.perceptual import (
        THUMB_SIDE,
        _crops,
        crop_stack,
        residual,
        residuals,
        thumbnail,
    )

    rng = np.random.default_rng(5)
    side = THUMB_SIDE
    a = rng.integers(0, 256, (40, side, side), dtype=np.uint8)
    a[:8] = [
        np.frombuffer(thumbnail(frame(scene(k))), np.uint8).reshape(side, side) for k in range(8)
    ]
    assert (crop_stack(a) == np.stack([_crops(t) for t in a])).all()
    b = np.clip(a.astype(int) + rng.integers(-25, 26, a.shape), 0, 255).astype(np.uint8)
    b[::3] = rng.integers(0, 256, b[::3].shape, dtype=np.uint8)  # strangers
    b[1] = np.roll(a[1], 2, axis=1)  # a shift: only a crop aligns it
    one = np.array([residual(x.tobytes(), y.tobytes()) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(residuals(a, b, chunk=7), one, rtol=1e-5, atol=1e-6)
    staged = residuals(a, b, good_enough=0.225)
    for limit in (0.225, 0.45):
        assert ((staged <= limit) == (one <= limit)).all()
    assert (one <= 0.45).any() and (one > 0.45).any()


def test_neighbours_list_by_list_match_the_exact_ones() -> None:
    """Above EXACT_MAX photos candidates come from k-means lists (`inverted_pairs`): they
    find the exact k-NN pairs above the floor, never a pair below it, never a photo itself."""
    import numpy as np

    from search.duplicates import inverted_pairs, neighbour_search

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((40, 48)).astype(np.float32)
    vecs = centres[rng.integers(0, 40, 3000)] + rng.standard_normal((3000, 48)).astype(np.float32)
    vecs[1::7] = vecs[::7][: len(vecs[1::7])] + 0.05 * rng.standard_normal((len(vecs[1::7]), 48))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    scores, rows = neighbour_search(vecs)(vecs, 17)
    qi, col = np.nonzero(scores >= 0.8)
    pairs_found = zip(qi.tolist(), rows[qi, col].tolist(), strict=True)
    exact = {tuple(sorted(p)) for p in pairs_found if p[0] != p[1]}
    found = inverted_pairs(vecs, 0.8, 16)
    pairs = {tuple(p) for p in found.tolist()}
    assert len(exact) >= 400 and len(exact & pairs) / len(exact) >= 0.99
    assert (found[:, 0] < found[:, 1]).all()
    assert (np.einsum("nd,nd->n", vecs[found[:, 0]], vecs[found[:, 1]]) >= 0.8 - 1e-6).all()


def test_old_library_gets_fingerprints_without_encoding(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from koclip.encoder import Encoder

    root = tmp_path / "p"
    original = frame(scene(3))
    write_rendition(original, "resized", root / "a.jpg")
    write_rendition(original, "png", root / "b.jpg")
    index(root, tiny_checkpoint)
    # What schema 2 looked like: no fingerprint columns.
    conn = sqlite3.connect(db.default_library_dir(root) / "library.sqlite3")
    conn.execute("ALTER TABLE photos DROP COLUMN phash")
    conn.execute("ALTER TABLE photos DROP COLUMN pthumb")
    conn.execute("UPDATE manifest SET schema_version = 2")
    conn.commit()
    conn.close()
    with open_lib(root) as lib:  # a reader sees no fingerprints, and no group yet
        assert find_duplicates(lib, DuplicateOptions(kind="same")) == []
    encoded = []
    real = Encoder.encode_pixels
    monkeypatch.setattr(Encoder, "encode_pixels", lambda e, p: encoded.append(len(p)) or real(e, p))
    assert index(root, tiny_checkpoint).unchanged == 2 and encoded == []
    with open_lib(root) as lib:
        assert lib.manifest().schema_version == db.SCHEMA_VERSION
        assert all(r.phash is not None for r in rows(lib).values())
        groups = find_duplicates(lib, DuplicateOptions(kind="same"))
    assert [len(g.photos) for g in groups] == [2]


# -- set aside and restore ------------------------------------------------------------------------


@pytest.fixture
def small_set(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    root = tmp_path / "photos"
    for k in range(3):
        original = frame(scene(20 + k))
        original.save(_mk(root / f"trip/{k}/big.jpg"), "JPEG", quality=92)
        write_rendition(original, "resized", root / f"trip/{k}/small.jpg")
    shutil.copy2(root / "trip/0/big.jpg", root / "copy.jpg")
    index(root, tiny_checkpoint)
    return root


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_set_aside_and_restore(small_set: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    root = small_set
    before = photo_files(root)
    with open_lib(root) as lib:
        ids_before = lib.photo_ids().tolist()
    review = tmp_path / "review"
    result = CliRunner().invoke(
        main, ["duplicates", "--library", str(root), "--kind", "same", "--set-aside", str(review)]
    )
    assert result.exit_code == 0, result.output
    moved = photo_files(review)
    # trip/0/big.jpg and copy.jpg are the same file: the keeper is the first by path
    assert moved == {"trip/0/small.jpg", "trip/1/small.jpg", "trip/2/small.jpg", "trip/0/big.jpg"}
    assert photo_files(root) == before - moved
    with open_lib(root) as lib:
        assert_consistent(lib)
        assert set(rows(lib)) == before - moved
    assert index(root, tiny_checkpoint).deleted == 0  # the indexer sees nothing gone
    result = CliRunner().invoke(main, ["duplicates", "--library", str(root), "--restore"])
    assert result.exit_code == 0, result.output
    assert photo_files(root) == before and photo_files(review) == set()
    with open_lib(root) as lib:
        assert_consistent(lib)
        assert lib.photo_ids().tolist() == ids_before  # the same ids, no re-encoding


def test_keep_chooses_another_keeper_per_group(small_set: Path, tmp_path: Path) -> None:
    root = small_set
    run = lambda *a: CliRunner().invoke(main, ["duplicates", "--library", str(root), *a])  # noqa: E731
    keep = ["--kind", "same", "--keep", "trip/1/small.jpg", "--keep", str(root / "trip/0/big.jpg")]
    listed = run(*keep)
    assert listed.exit_code == 0, listed.output
    assert f"keep: {root / 'trip/1/small.jpg'}  [chosen]" in listed.output
    assert f"keep: {root / 'trip/0/big.jpg'}  [chosen]" in listed.output
    review = tmp_path / "review"
    result = run(*keep, "--set-aside", str(review))
    assert result.exit_code == 0, result.output
    assert photo_files(review) == {
        "trip/0/small.jpg",
        "copy.jpg",
        "trip/1/big.jpg",
        "trip/2/small.jpg",
    }
    assert {"trip/0/big.jpg", "trip/1/small.jpg", "trip/2/big.jpg"} <= photo_files(root)
    run("--restore")
    for bad in (["--keep", "nowhere.jpg"], ["--keep", "copy.jpg", "--keep", "trip/0/small.jpg"]):
        refused = run("--kind", "same", *bad, "--set-aside", str(review))
        assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused
    assert photo_files(review) == set()


def test_a_keeper_is_never_moved_as_another_groups_extra() -> None:
    from datetime import datetime

    from search.duplicates import DuplicateGroup, DuplicatePhoto, extras_to_move

    def photo(pid: int) -> DuplicatePhoto:
        return DuplicatePhoto(pid, f"/p/{pid}", f"{pid}", 10, 10, 5, datetime(2024, 1, 1), 1.0)

    same = DuplicateGroup("same", (photo(1), photo(2)), "most pixels")
    similar = DuplicateGroup("similar", (photo(3), photo(1)), "most pixels")  # 1 keeps "same"
    assert extras_to_move([same, similar]) == [2]


def test_set_aside_default_folder_never_overwrites(small_set: Path) -> None:
    root = small_set
    aside = db.default_library_dir(root) / "set-aside"
    _mk(aside / "trip/0/big.jpg").write_bytes(b"mine")  # something already there
    result = CliRunner().invoke(
        main, ["duplicates", "--library", str(root), "--kind", "identical", "--set-aside"]
    )
    assert result.exit_code == 0, result.output
    assert "skipped trip/0/big.jpg" in result.output
    assert (aside / "trip/0/big.jpg").read_bytes() == b"mine"
    assert (root / "copy.jpg").is_file() and (root / "trip/0/big.jpg").is_file()


def test_set_aside_refuses_a_folder_inside_the_photos(small_set: Path) -> None:
    with pytest.raises(SetAsideError, match="inside the photo folder"):
        set_aside(db.default_library_dir(small_set), [1], small_set / "review")
    result = CliRunner().invoke(
        main, ["duplicates", "--library", str(small_set), "--set-aside", str(small_set / "x")]
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_set_aside_refuses_another_file_system(small_set: Path, monkeypatch) -> None:
    import indexer.aside as aside

    real = os.stat
    monkeypatch.setattr(
        aside.os, "stat", lambda p, *a, **k: _other_dev(real(p, *a, **k), "elsewhere" in str(p))
    )
    (small_set.parent / "elsewhere").mkdir()
    with pytest.raises(SetAsideError, match="another file system"):
        set_aside(db.default_library_dir(small_set), [1], small_set.parent / "elsewhere")
    assert restore(db.default_library_dir(small_set)).moved == []


def _other_dev(st: os.stat_result, other: bool) -> os.stat_result:
    if not other:
        return st
    fields = list(st)
    fields[2] = st.st_dev + 1  # st_dev
    return os.stat_result(fields)


def test_set_aside_across_file_systems_when_told(
    small_set: Path, tmp_path: Path, monkeypatch
) -> None:
    import errno

    import indexer.aside as aside

    real_link = os.link

    def link(src, dst, **kw):  # the photo folder and the review folder on other devices
        if "review" in str(dst) and not Path(src).name.startswith("."):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, **kw)

    monkeypatch.setattr(aside.os, "link", link)
    review = tmp_path / "review"
    with open_lib(small_set) as lib:
        extras = [
            p.id for g in find_duplicates(lib, DuplicateOptions(kind="same")) for p in g.extras
        ]
    report = set_aside(db.default_library_dir(small_set), extras, review)
    assert report.moved == [] and len(report.skipped) == len(extras)
    assert not review.exists() or photo_files(review) == set()
    report = set_aside(db.default_library_dir(small_set), extras, review, cross_filesystem=True)
    assert len(report.moved) == len(extras) and not list(review.rglob(".*.tmp"))
    with open_lib(small_set) as lib:
        assert_consistent(lib)


def test_similar_shots_are_a_kind_of_their_own() -> None:
    """Grouping alone, on a hand-made table: a rendition pair, a burst shot, a stranger."""
    import numpy as np

    from search.duplicates import Table, group

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, 576, dtype=np.uint8)
    moved = base.copy()
    moved[:200] = 255 - moved[:200]  # the subject moved: a third of the thumbnail differs
    stranger = rng.integers(0, 256, 576, dtype=np.uint8)
    v = np.eye(4, dtype=np.float32)
    shot = np.array([0.95, np.sqrt(1 - 0.95**2), 0, 0], np.float32)
    table = Table(
        ids=np.array([1, 2, 3, 4]),
        phash=np.array([0b1011, 0b1011, 0b1111, 1 << 40], np.int64),
        has_hash=np.ones(4, bool),
        content=np.array(["a", "b", "c", "d"], object),
        vectors=np.stack([v[0], v[0], shot, v[2]]),
        pixels=np.array([100, 50, 100, 100]),
        sizes=np.array([10, 10, 10, 10]),
        taken=np.full(4, np.datetime64("2024-01-01T00:00:00"), "datetime64[s]"),
        paths=np.array(["a", "b", "c", "d"], object),
    )
    thumbs = {1: base.tobytes(), 2: base.tobytes(), 3: moved.tobytes(), 4: stranger.tobytes()}
    pairs = np.array([[0, 1], [0, 2], [1, 2], [0, 3], [2, 3]])

    def run(**kw):
        found = group(table, pairs, DuplicateOptions(**kw), lambda ids: thumbs)
        return [(kind, rows) for kind, rows, _ in found]

    assert run() == [("same", [0, 1]), ("similar", [0, 2])]
    assert run(threshold=0.99) == [("same", [0, 1])]
    assert run(kind="similar") == [("similar", [0, 2])]
