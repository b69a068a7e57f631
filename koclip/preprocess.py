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

import os
import threading
import unicodedata
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from koclip.errors import ImageError

PREPROCESS_VERSION = "clip-224-bicubic-v1"
IMAGE_SIZE = 224
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

DEFAULT_PROMPT = "이것은 {} 이다."

# JPEG draft decoding keeps each side >= DRAFT_FACTOR x the model input. libjpeg scales by 1/2,
# 1/4 or 1/8, so for a 12 MP photo factor 2 decodes at 1000x750 and factor 4 at 2000x1500.
# bench/encode.py --draft-check measured (koclip-base sizes, noisy 12 MP JPEGs): factor 2 gives
# min cosine 0.9988 to the exact path, under the 0.999 bar; factor 4 gives 0.9994 at half the
# cost of a full decode. So 4 is the default.
DRAFT_FACTOR = 4
# The decompression-bomb guard every decoder of library photos uses (the indexer's default
# --max-megapixels): a photo the indexer took is one the web and eval may decode.
MAX_PIXELS = 100_000_000

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


def resize_shortest_side(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Bicubic resize so the shortest side is `size` (long side truncated, as transformers does)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_size = (size, new_long) if width <= height else (new_long, size)
    if new_size == image.size:
        return image
    return image.resize(new_size, resample=Image.Resampling.BICUBIC, reducing_gap=None)


def center_crop(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Centre crop to size x size (padding with black if smaller, as transformers does)."""
    width, height = image.size
    top = (height - size) // 2
    left = (width - size) // 2
    return image.crop((left, top, left + size, top + size))


def preprocess(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB PIL image -> (size, size, 3) float32, KoCLIP's CLIP transform."""
    if image.mode != "RGB":
        image = to_rgb(image)
    image = center_crop(resize_shortest_side(image, size), size)
    pixels = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    return (pixels - CLIP_MEAN) / CLIP_STD


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited over white, 16-bit is scaled, not clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if (
        mode in ("RGBA", "LA", "PA", "RGBa", "La")
        or (mode == "P" and "transparency" in image.info)
        or (mode in ("L", "RGB") and "transparency" in image.info)
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    arr = np.asarray(image)
    arr = arr.astype(np.float64)
    if image.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif image.mode == "F":
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
    else:  # "I": 32-bit ints; PNG 16-bit grey often lands here
        peak = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / 65535.0 if peak > 255 else 1.0
    grey = np.clip(np.nan_to_num(arr * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def open_image(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    max_pixels: int | None = None,
    draft: bool = True,
    size: int = IMAGE_SIZE,
    draft_factor: int = DRAFT_FACTOR,
) -> Image.Image:
    """Decode an image file into an EXIF-oriented RGB image; raises ImageError with the reason."""
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
        raise ImageError(
            f"{width}x{height} is {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.1f} (raise --max-megapixels to index it)"
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
