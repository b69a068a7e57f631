"""Captioned images as JSON Lines: `{"image": "path/relative/to/--images", "captions": [...]}`.

The shape of XM3600 and Korean COCO exports, one image per line. Any bad line raises
`CaptionsError` naming the file, the line number and the reason.
"""

from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from koclip.errors import KoclipSearchError
from koclip.images.preprocess import nfc


class CaptionsError(KoclipSearchError):
    """A captions file (or an image it names) cannot be used; the message says where and why."""

    code = "bad_captions"


@dataclass(frozen=True)
class CaptionRecord:
    """One image and its captions; `line` is the 1-based line of the captions file."""

    line: int
    image: str  # as written in the file (NFC), relative to the images folder
    path: Path  # where it is on disk
    captions: tuple[str, ...]


def read_captions(
    captions_file: str | os.PathLike[str], images_dir: str | os.PathLike[str]
) -> list[CaptionRecord]:
    """Every record of a captions file, each image checked to exist under `images_dir`."""
    source = Path(captions_file)
    root = Path(images_dir).expanduser()
    if not root.is_dir():
        raise CaptionsError(f"{images_dir}: not a folder")
    records: list[CaptionRecord] = []
    seen: dict[str, int] = {}
    for number, text in _lines(source):
        if not text.strip():
            continue
        record = _parse(source, number, text, root)
        if record.image in seen:
            raise _bad(
                source, number, f"image {record.image!r} is already on line {seen[record.image]}"
            )
        seen[record.image] = number
        records.append(record)
    if not records:
        raise CaptionsError(f"{source}: no captioned images")
    return records


def _lines(source: Path) -> Iterator[tuple[int, str]]:
    try:
        fh = open(source, "rb")  # noqa: SIM115 - closed below; bytes so a bad line is located
    except OSError as exc:
        raise CaptionsError(f"{source}: cannot read ({exc.strerror or exc})") from None
    with fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _bad(
                    source, number, f"not UTF-8 ({exc.reason} at byte {exc.start})"
                ) from None
            if number == 1:
                text = text.removeprefix("\ufeff")  # a BOM from Windows editors
            yield number, text


def _bad(source: Path, number: int, reason: str) -> CaptionsError:
    return CaptionsError(f"{source}, line {number}: {reason}")


def _parse(source: Path, number: int, text: str, root: Path) -> CaptionRecord:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _bad(source, number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise _bad(source, number, f"expected a JSON object, got {type(data).__name__}")
    image = data.get("image")
    if not isinstance(image, str) or not image.strip():
        raise _bad(source, number, '"image" must be a non-empty string (a path under --images)')
    image = nfc(image.strip())
    if PurePosixPath(image).is_absolute() or Path(image).is_absolute():
        raise _bad(source, number, f"image {image!r} must be relative to --images")
    captions = data.get("captions")
    if not isinstance(captions, list) or not captions:
        raise _bad(source, number, '"captions" must be a non-empty list of strings')
    cleaned = []
    for i, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise _bad(source, number, f"caption {i + 1} must be a non-empty string")
        cleaned.append(nfc(caption.strip()))
    path = _find(root, image, data["image"].strip())
    if path is None:
        raise _bad(source, number, f"image {image!r} not found under {root}")
    return CaptionRecord(number, image, path, tuple(cleaned))


def _find(root: Path, image: str, raw: str) -> Path | None:
    # Files made on macOS may be stored with decomposed (NFD) Hangul names.
    for name in dict.fromkeys((image, raw, unicodedata.normalize("NFD", image))):
        path = root / name
        if path.is_file():
            return path
    return None
