"""Image decoding and KoCLIP's image transform, as pure thread-safe functions.

`preprocess` reproduces transformers' `CLIPImageProcessor` defaults (the transform KoCLIP was
trained with, for koclip-base *and* koclip-large): bicubic resize of the shortest side to 224,
centre crop 224, rescale 1/255, CLIP mean/std; channels-last float32. tests/test_preprocess.py
proves it against `CLIPImageProcessor` to 1e-5.

`open_image` turns a file into the RGB image that transform expects: EXIF orientation applied,
the first frame of an animation, any mode to RGB with transparency over white, and (optionally)
JPEG draft decoding at no less than `DRAFT_FACTOR` times the model's input size.
"""

from __future__ import annotations

import math
import os
import threading
import unicodedata
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from koclip.errors import ImageError, ImageTooLargeError
from koclip.names import MAX_PIXELS

PREPROCESS_VERSION = "clip-224-bicubic-v1"
IMAGE_SIZE = 224
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

DEFAULT_PROMPT = "이것은 {} 이다."

# JPEG draft decoding keeps each side >= DRAFT_FACTOR x the model input. libjpeg scales by 1/2,
# 1/4 or 1/8, so for a 12 MP photo factor 2 decodes at 1000x750 and factor 4 at 2000x1500.
# bench/encode.py --draft-check measured (koclip-base sizes, noisy 12 MP JPEGs): factor 2 gives
# min cosine 0.9988 to the exact path, under the 0.999 bar; factor 4 gives 0.9994 and still
# decodes far fewer pixels than a full decode. So 4 is the default.
DRAFT_FACTOR = 4

# Mode conversions with a wide intermediate run this many pixels at a time.
_BAND_PIXELS = 1 << 22
# Shortest-side resizes are made whole before the centre crop up to this aspect ratio (a
# 224 x 14,336 strip); thinner images resample only the crop (see `resize_and_crop`).
EXACT_RESIZE_ASPECT = 64

_heif_lock = threading.Lock()
_heif_registered = False


def _register_heif() -> None:
    """HEIC/HEIF/AVIF through pillow-heif, when it is installed."""
    global _heif_registered
    with _heif_lock:
        if _heif_registered:
            return
        _heif_registered = True
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
        except ImportError:
            pass


def _shortest_side_size(size_wh: tuple[int, int], size: int) -> tuple[int, int]:
    """The shortest side scaled to `size`, the long side truncated, as transformers does."""
    width, height = size_wh
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def resize_and_crop(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Bicubic resize of the shortest side to `size`, then the centre `size` x `size` crop.

    Past `EXACT_RESIZE_ASPECT` the whole resize would be enormous (a 1x65000 strip becomes
    224x14.5M pixels, 9.8 GB), so only the crop is computed: the source rows the filter needs,
    resampled through the boxes that map onto the crop. Pillow picks the order of its two
    passes itself, and the 8-bit rounding between them can move a pixel by a few grey
    levels, so photos of ordinary shape keep the plain resize that tests/test_preprocess.py
    holds to transformers' CLIPImageProcessor.
    """
    width, height = image.size
    new_w, new_h = _shortest_side_size(image.size, size)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if new_w * new_h <= EXACT_RESIZE_ASPECT * size * size:
        full = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
        return full.crop((left, top, left + size, top + size))
    sx, sy = width / new_w, height / new_h
    x0, x1, y0, y1 = left * sx, (left + size) * sx, top * sy, (top + size) * sy
    # Bicubic reads 2 source rows either side of a centre, times the scale when shrinking.
    margin = 2 * max(sy, 1.0) + 2
    r0, r1 = max(0, math.floor(y0 - margin)), min(height, math.ceil(y1 + margin))
    bicubic = Image.Resampling.BICUBIC
    rows = image.crop((0, r0, width, r1))
    rows = rows.resize((size, r1 - r0), bicubic, box=(x0, 0, x1, r1 - r0), reducing_gap=None)
    return rows.resize((size, size), bicubic, box=(0, y0 - r0, size, y1 - r0), reducing_gap=None)


def preprocess(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB PIL image -> (size, size, 3) float32, KoCLIP's CLIP transform."""
    if image.mode != "RGB":
        image = to_rgb(image)
    pixels = np.asarray(resize_and_crop(image, size), dtype=np.float32) * np.float32(1 / 255)
    return (pixels - CLIP_MEAN) / CLIP_STD


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited over white, 16-bit is scaled, not clipped.

    Conversions that need a wider intermediate (RGBA, float64) run a band of rows at a time, so
    a 100-megapixel image costs its RGB result beside the decoded source, not several copies.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if (
        mode in ("RGBA", "LA", "PA", "RGBa", "La")
        or (mode == "P" and "transparency" in image.info)
        or (mode in ("L", "RGB") and "transparency" in image.info)
    ):
        return _by_bands(image, "RGB", _over_white)
    if mode.startswith("I;16") or mode in ("I", "F"):
        scale = _high_depth_scale(image)
        grey = _by_bands(image, "L", lambda band: _scaled_grey(band, scale))
        return grey.convert("RGB")
    return image.convert("RGB")


def _by_bands(
    image: Image.Image, mode: str, convert: Callable[[Image.Image], Image.Image]
) -> Image.Image:
    width, height = image.size
    rows = max(1, _BAND_PIXELS // max(width, 1))
    if rows >= height:
        return convert(image)
    out = Image.new(mode, image.size)
    for top in range(0, height, rows):
        out.paste(convert(image.crop((0, top, width, min(height, top + rows)))), (0, top))
    return out


def _over_white(image: Image.Image) -> Image.Image:
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_scale(image: Image.Image) -> float:
    if image.mode.startswith("I;16"):
        return 255.0 / 65535.0
    peak = max((_band_max(band) for band in _bands(image)), default=0.0)
    if image.mode == "F":
        return 255.0 if peak <= 1.0 else 1.0
    return 255.0 / 65535.0 if peak > 255 else 1.0  # "I": PNG 16-bit grey often lands here


def _bands(image: Image.Image) -> Iterator[Image.Image]:
    width, height = image.size
    rows = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield image.crop((0, top, width, min(height, top + rows)))


def _band_max(band: Image.Image) -> float:
    arr = np.asarray(band)
    return float(np.nanmax(arr)) if arr.size and not np.isnan(arr).all() else float("-inf")


def _scaled_grey(band: Image.Image, scale: float) -> Image.Image:
    arr = np.asarray(band).astype(np.float64)
    grey = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey, mode="L")


def open_image(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    max_pixels: int | None = MAX_PIXELS,
    draft: bool = True,
    size: int = IMAGE_SIZE,
    draft_factor: int = DRAFT_FACTOR,
) -> Image.Image:
    """Decode an image file into an EXIF-oriented RGB image; raises ImageError with the reason.

    Memory stays bounded by `max_pixels` (None lifts the guard): the decode is refused above
    it, conversions run in bands, and `preprocess` never materialises a thin image's resize.
    """
    _register_heif()
    if isinstance(source, (str, os.PathLike)):
        try:
            if os.path.getsize(source) == 0:
                raise ImageError("empty file (0 bytes)")
        except OSError as exc:
            raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        raise ImageError("not an image, or an unsupported format") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too large to decode safely ({exc})") from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    try:
        return _decode(image, max_pixels=max_pixels, draft=draft_factor if draft else 0, size=size)
    finally:
        image.close()


def _decode(image: Image.Image, *, max_pixels: int | None, draft: int, size: int) -> Image.Image:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"invalid dimensions {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{width}x{height} is {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.1f}"
        )
    try:
        if draft and image.format == "JPEG":
            # Decode at a reduced DCT scale, never below `draft` times the model input per side.
            image.draft("RGB", (draft * size, draft * size))
        image.seek(0)  # first frame of an animation
        image.load()
        oriented = ImageOps.exif_transpose(image)
        rgb = to_rgb(oriented if oriented is not None else image)
        rgb.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        text = str(exc)
        if "truncated" in text:
            raise ImageError("truncated file (image data ends early)") from None
        raise ImageError(f"corrupt image data ({text or type(exc).__name__})") from None
    return rgb


def nfc(text: str) -> str:
    """Unicode NFC: macOS and some IMEs hand over decomposed (NFD) Hangul."""
    return unicodedata.normalize("NFC", text)


def apply_prompt(text: str, prompt: str | None = DEFAULT_PROMPT) -> str:
    """NFC-normalise and wrap a query in the prompt template (`None` keeps it raw)."""
    text = nfc(text).strip()
    return prompt.format(text) if prompt else text
