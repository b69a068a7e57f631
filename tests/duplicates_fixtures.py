"""A generated photo set for duplicate finding: distinct photo-like scenes, renditions of each
(the edits a "same picture" must survive) and burst-like sequences (similar, not the same)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

import db

SCENE = (480, 360)  # the world a frame is cut from (bursts move the frame in it)
FRAME = (400, 300)

# name -> edit of a decoded frame (format-changing ones are applied when saved)
RENDITIONS = (
    "resized",
    "jpeg-q40",
    "png",
    "webp",
    "exif-rotated",
    "pixel-rotated",
    "cropped",
    "brighter",
    "contrast",
    "bordered",
)


def scene(seed: int) -> Image.Image:
    """A photo-like scene: a sky/ground gradient, soft shapes, texture; distinct per seed."""
    rng = np.random.default_rng(seed)
    w, h = SCENE
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    horizon = rng.uniform(0.3, 0.7)
    t = np.clip((np.arange(h) / h - horizon) * 4 + 0.5, 0, 1)[:, None, None]
    sky = np.linspace(0.7, 1.0, w)[None, :, None] if seed % 2 else 1.0
    base = (1 - t) * top * sky + t * bottom
    img = Image.fromarray(np.broadcast_to(base, (h, w, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 12))):
        x, y = rng.integers(0, w), rng.integers(0, h)
        rx, ry = rng.integers(15, w // 4), rng.integers(15, h // 4)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (x - rx, y - ry, x + rx, y + ry)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(2))
    grain = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8))


def frame(world: Image.Image, dx: int = 0, dy: int = 0) -> Image.Image:
    """The camera's view of a scene, moved by (dx, dy) pixels from the centre."""
    w, h = FRAME
    x0 = (SCENE[0] - w) // 2 + dx
    y0 = (SCENE[1] - h) // 2 + dy
    return world.crop((x0, y0, x0 + w, y0 + h))


def burst(world: Image.Image, seed: int, n: int = 3) -> list[Image.Image]:
    """Later shots of the same moment: the camera moved and the subject moved."""
    rng = np.random.default_rng(10_000 + seed)
    shots = []
    for i in range(1, n + 1):
        moved = world.copy()
        draw = ImageDraw.Draw(moved)
        x, y = rng.integers(100, SCENE[0] - 100), rng.integers(80, SCENE[1] - 80)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse((x - 50, y - 60, x + 50, y + 60), fill=colour)  # the subject, elsewhere
        dx, dy = int(rng.choice([-1, 1]) * 30 * i / n), int(rng.choice([-1, 1]) * 20 * i / n)
        shots.append(frame(moved.filter(ImageFilter.GaussianBlur(1)), dx, dy))
    return shots


def write_rendition(original: Image.Image, kind: str, path: Path) -> Path:
    """Save `original` edited as `kind` (see RENDITIONS); returns the path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = original.size
    if kind == "resized":
        original.resize((w * 3 // 5, h * 3 // 5), Image.Resampling.LANCZOS).save(path, "JPEG")
    elif kind == "jpeg-q40":
        original.save(path, "JPEG", quality=40)
    elif kind == "png":
        original.save(path.with_suffix(".png"), "PNG")
        return path.with_suffix(".png")
    elif kind == "webp":
        original.save(path.with_suffix(".webp"), "WEBP", quality=80)
        return path.with_suffix(".webp")
    elif kind == "exif-rotated":  # stored sideways, EXIF says how to turn it upright
        exif = Image.Exif()
        exif[0x0112] = 6  # display = stored turned 90 degrees clockwise
        original.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=90, exif=exif)
    elif kind == "pixel-rotated":  # the pixels turned upright and saved without the tag
        ImageOps.exif_transpose(_exif_copy(original)).save(path, "JPEG", quality=90)
    elif kind == "cropped":
        dx, dy = w // 20, h // 20  # 10% of each side in all
        original.crop((dx, dy, w - dx, h - dy)).save(path, "JPEG", quality=90)
    elif kind == "brighter":
        ImageEnhance.Brightness(original).enhance(1.15).save(path, "JPEG", quality=90)
    elif kind == "contrast":
        ImageEnhance.Contrast(original).enhance(0.85).save(path, "JPEG", quality=90)
    elif kind == "bordered":
        ImageOps.expand(original, border=w // 25, fill=(255, 255, 255)).save(path, "JPEG")
    else:
        raise ValueError(kind)
    return path


def _exif_copy(original: Image.Image) -> Image.Image:
    """A JPEG of `original` stored sideways with orientation 6, decoded again (pixels upright)."""
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    original.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", quality=95, exif=exif)
    buf.seek(0)
    return Image.open(buf)


def write_set(root: Path, n_scenes: int, *, burst_every: int = 2) -> dict[str, str]:
    """Write the set under `root`; returns relative path -> truth label.

    Labels: "s<k>" for the original of scene k and its renditions (one same-picture group
    each), "s<k>-b<i>" for burst shot i of scene k (each its own picture, similar to s<k>).
    """
    truth: dict[str, str] = {}
    for k in range(n_scenes):
        world = scene(k)
        original = frame(world)
        path = root / f"scene{k:03d}" / "original.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        original.save(path, "JPEG", quality=92)
        truth[path.relative_to(root).as_posix()] = f"s{k}"
        pair = (RENDITIONS[k % len(RENDITIONS)], RENDITIONS[(k + 3) % len(RENDITIONS)])
        for j, kind in enumerate(pair):
            written = write_rendition(original, kind, root / f"scene{k:03d}" / f"r{j}-{kind}.jpg")
            truth[written.relative_to(root).as_posix()] = f"s{k}"
        if k % burst_every == 0:
            for i, shot in enumerate(burst(world, k)):
                shot_path = root / f"scene{k:03d}" / f"burst{i}.jpg"
                shot.save(shot_path, "JPEG", quality=90)
                truth[shot_path.relative_to(root).as_posix()] = f"s{k}-b{i}"
    return truth


# A small album for the web view: Korean names (one stored NFD, as macOS writes them).
SEA = "여행/바다.jpg"
SEA_SMALL = "여행/바다-작게.jpg"
SEA_PNG = "백업/바다.png"
SEA_COPY = "백업/바다-사본.jpg"  # the same bytes as SEA; its file name is NFD on disk
HILL = "산/산.jpg"
HILL_SMALL = "산/산-작게.jpg"
ALONE = "기타/숲.jpg"


def write_duplicate_album(root: Path) -> None:
    """Two pictures in several renditions and one photo alone: one four-photo "same" group
    (SEA first, whose PNG is the suggested keeper: as many pixels, the largest file), one pair."""
    import shutil
    import unicodedata

    sea, hill = frame(scene(71)), frame(scene(72))
    for path in (SEA, HILL, ALONE):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
    sea.save(root / SEA, "JPEG", quality=90)
    write_rendition(sea, "resized", root / SEA_SMALL)
    write_rendition(sea, "png", root / SEA_PNG)
    folder, name = SEA_COPY.rsplit("/", 1)
    shutil.copy2(root / SEA, root / folder / unicodedata.normalize("NFD", name))
    hill.save(root / HILL, "JPEG", quality=90)
    write_rendition(hill, "resized", root / HILL_SMALL)
    frame(scene(73)).save(root / ALONE, "JPEG", quality=90)


def photo_files(root: Path) -> set[str]:
    """Every file under `root` (the library folder left out), as paths relative to it."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and db.LIBRARY_DIRNAME not in p.parts
    }
