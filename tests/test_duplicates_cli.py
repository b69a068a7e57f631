"""`duplicates` as users expect it: a summary first, --dry-run, where a set-aside went and how
to undo it, `--restore --json`, no empty folders left aside, the camera original kept."""

from __future__ import annotations

import json
import shlex
import shutil
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import db
from cli.main import main
from indexer.aside import _prune_empty
from search.duplicates import DuplicatePhoto, is_camera_original, keeper_reason
from tests.duplicates_fixtures import frame, photo_files, scene, write_rendition
from tests.indexer_fixtures import index, open_lib, rows

EXTRAS = {"trip/0/small.jpg", "trip/1/small.jpg", "trip/2/small.jpg", "trip/0/big.jpg"}


@pytest.fixture
def small_set(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    """Three pictures, each as a big and a small rendition, and a copy of the first big one."""
    root = tmp_path / "photos"
    for k in range(3):
        original = frame(scene(20 + k))
        big = root / f"trip/{k}/big.jpg"
        big.parent.mkdir(parents=True)
        original.save(big, "JPEG", quality=92)
        write_rendition(original, "resized", root / f"trip/{k}/small.jpg")
    shutil.copy2(root / "trip/0/big.jpg", root / "copy.jpg")
    index(root, tiny_checkpoint)
    return root


def _run(root: Path, *args: str):
    return CliRunner().invoke(main, ["duplicates", "--library", str(root), *args])


def test_summary_comes_first_in_text_and_json(small_set: Path) -> None:
    extra_bytes = sum((small_set / p).stat().st_size for p in EXTRAS)
    text = _run(small_set, "--kind", "same")
    assert text.exit_code == 0, text.output
    first = text.output.splitlines()[0]
    assert first.startswith("3 groups, 7 photos: setting the 4 extras aside would free ")
    assert first.endswith(" KB in the photo folder")
    as_json = json.loads(_run(small_set, "--kind", "same", "--json").output)
    assert as_json["summary"] == {
        "groups": 3,
        "photos": 7,
        "extras": 4,
        "extra_bytes": extra_bytes,
    }
    none = _run(small_set, "--kind", "same", "--under", "nowhere")
    assert none.output.splitlines()[0] == "no duplicates found"


def test_dry_run_shows_what_would_move_and_moves_nothing(small_set: Path, tmp_path: Path):
    before = photo_files(small_set)
    review = tmp_path / "review"
    text = _run(small_set, "--kind", "same", "--set-aside", str(review), "--dry-run")
    assert text.exit_code == 0, text.output
    assert f"nothing was moved; --set-aside would move 4 photos into {review}" in text.output
    for rel in EXTRAS:
        assert f"{small_set / rel} -> {review / rel}" in text.output
    assert f"keep: {small_set / 'trip/1/big.jpg'}  [same: most pixels" in text.output
    out = json.loads(
        _run(small_set, "--kind", "same", "--set-aside", str(review), "--dry-run", "--json").output
    )
    assert out["dry_run"] is True and out["destination"] == str(review)
    assert {m["path"] for m in out["would_move"]} == {str(small_set / p) for p in EXTRAS}
    moved_big = next(m for m in out["would_move"] if m["path"].endswith("trip/0/big.jpg"))
    assert moved_big["keep"] == str(small_set / "copy.jpg") and moved_big["kind"] == "same"
    assert photo_files(small_set) == before and not review.exists()
    # the destination is checked as a set-aside checks it
    inside = _run(small_set, "--set-aside", str(small_set / "x"), "--dry-run")
    assert inside.exit_code == 2 and "inside the photo folder" in inside.output
    alone = _run(small_set, "--dry-run")
    assert alone.exit_code == 2 and "--dry-run goes with --set-aside" in alone.output


def test_set_aside_says_where_and_how_to_undo_and_restore_cleans_up(
    small_set: Path, tmp_path: Path
) -> None:
    before = photo_files(small_set)
    review = tmp_path / "review"
    done = _run(small_set, "--kind", "same", "--set-aside", str(review))
    assert done.exit_code == 0, done.output
    assert done.output.startswith("3 groups, 7 photos: setting the 4 extras aside")
    assert f"they are in {review}\n" in done.output
    undo = done.output.split("to put them back: ")[1].strip()
    library = small_set / db.LIBRARY_DIRNAME
    assert undo == f"koclip-search duplicates --restore --library {shlex.quote(str(library))}"
    assert photo_files(review) == EXTRAS
    assert (review / "trip/1").is_dir()

    argv = shlex.split(undo)
    assert argv[0] == "koclip-search"
    back = CliRunner().invoke(main, [*argv[1:], "--json"])
    assert back.exit_code == 0, back.output
    out = json.loads(back.output)
    assert out["restored"]["count"] == 4
    assert set(out["restored"]["paths"]) == {str(small_set / p) for p in EXTRAS}
    assert photo_files(small_set) == before
    # the folders the set-aside made are gone with the photos; the folder itself stays
    assert review.is_dir() and list(review.iterdir()) == []
    with open_lib(small_set) as lib:
        assert set(rows(lib)) == before


def test_set_aside_json_names_the_folder_and_the_undo(small_set: Path) -> None:
    out = json.loads(_run(small_set, "--kind", "identical", "--set-aside", "--json").output)
    library = small_set / db.LIBRARY_DIRNAME
    assert out["destination"] == str(library / "set-aside")
    assert out["undo"] == f"koclip-search duplicates --restore --library {library}"
    assert out["moved"] == ["trip/0/big.jpg"] and out["summary"]["extras"] == 1
    assert _run(small_set, "--restore").exit_code == 0
    assert list((library / "set-aside").iterdir()) == []


def test_the_undo_command_is_quoted_for_the_shell(tmp_path: Path) -> None:
    from cli.duplicates_cmd import _undo_command

    odd = tmp_path / "내 사진's $HOME"
    command = _undo_command(odd)
    assert shlex.split(command) == [
        "koclip-search",
        "duplicates",
        "--restore",
        "--library",
        str(odd),
    ]


def test_pruning_never_removes_the_photo_folder_or_leaves_the_set_aside_folder(tmp_path):
    top = tmp_path / "top"
    photos = top / "photos"  # empty: only the guard keeps it
    photos.mkdir(parents=True)
    library = tmp_path / "lib"
    # set aside into `top` (a folder above the photos), a photo keyed photos/x.jpg
    _prune_empty(top / "photos" / "x.jpg", "photos/x.jpg", photos, library)
    assert photos.is_dir()
    aside = tmp_path / "aside"
    (aside / "a/b").mkdir(parents=True)
    (aside / "a/keep.txt").write_text("not ours")
    _prune_empty(aside / "a/b/x.jpg", "a/b/x.jpg", photos, library)
    assert not (aside / "a/b").exists() and (aside / "a").is_dir()
    (aside / "c").mkdir()
    _prune_empty(aside / "c/x.jpg", "c/x.jpg", photos, library)
    assert not (aside / "c").exists() and aside.is_dir()


# -- the keeper: the camera original over a larger re-encode -----------------------------------


def test_camera_original_rule_and_reason() -> None:
    assert is_camera_original("a/IMG_1.JPG", "exif") and is_camera_original("b.heic", "exif")
    assert not is_camera_original("a.png", "exif") and not is_camera_original("a.jpg", "mtime")

    def photo(path, w, size, original):
        day = datetime(2024, 1, 1)
        return DuplicatePhoto(0, path, path, w, w, size, day, 1.0, camera_original=original)

    original, bigger = photo("IMG_1.jpg", 10, 5, True), photo("edit.png", 20, 9, False)
    assert keeper_reason([original, bigger]) == (
        "camera original (EXIF date, JPG) over a larger re-encode"
    )
    assert (
        keeper_reason([photo("IMG_1.jpg", 30, 9, True), bigger])
        == "camera original (EXIF date, JPG)"
    )
    # two originals (or none): the old rule decides
    assert keeper_reason([photo("a.jpg", 20, 5, True), photo("b.jpg", 10, 5, True)]).startswith(
        "most pixels"
    )


def test_the_camera_original_is_kept_over_a_larger_re_encode(tmp_path, tiny_checkpoint):
    root = tmp_path / "photos"
    root.mkdir()
    picture = frame(scene(31))
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2023:05:05 12:00:00"  # DateTimeOriginal
    picture.save(root / "IMG_0001.jpg", "JPEG", quality=85, exif=exif)
    w, h = picture.size
    upscaled = picture.resize((w * 3 // 2, h * 3 // 2), Image.Resampling.LANCZOS)
    upscaled.save(root / "edited.png", "PNG")  # larger in pixels and bytes, no EXIF
    upscaled.save(root / "edited-big.jpg", "JPEG", quality=98)  # a JPEG saved without EXIF
    index(root, tiny_checkpoint)
    out = json.loads(_run(root, "--kind", "same", "--json").output)
    [group] = out["groups"]
    assert group["keep"] == str(root / "IMG_0001.jpg")
    assert group["reason"] == "camera original (EXIF date, JPG) over a larger re-encode"
    assert len(group["photos"]) == 3
    sizes = {Path(p["path"]).name: p["bytes"] for p in group["photos"]}
    assert sizes["edited.png"] > sizes["IMG_0001.jpg"]
