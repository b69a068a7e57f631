"""Image decoding and the CLIP transform, proven against transformers' CLIPImageProcessor."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from koclip import ImageError, open_image, preprocess
from koclip.images.preprocess import apply_prompt, to_rgb


def photo_like(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: closer to a photo than pure noise, so resizing matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w, y / h, (x + y) / (w + h)], axis=-1) * 200
    noise = rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "size", [(640, 480), (480, 640), (224, 224), (100, 60), (1001, 333), (225, 224)]
)
def test_matches_clip_image_processor(size):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image = photo_like(*size)
    ref = CLIPImageProcessorPil()(images=image, return_tensors="np")["pixel_values"][0]
    ours = preprocess(image)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref.transpose(1, 2, 0), atol=1e-5)


def save(image: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    buf.seek(0)
    return buf


def test_alpha_is_composited_over_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgb = to_rgb(rgba)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((0, 0)) == (0, 0, 255)
    la = Image.new("LA", (2, 2), (0, 0))
    assert to_rgb(la).getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_from_file():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.putpixel((1, 1), 1)
    img = open_image(save(p, "PNG", transparency=0))
    assert img.mode == "RGB"
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 1)) == (10, 200, 30)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    arr = np.full((6, 6), 32768, dtype=np.uint16)
    img = open_image(save(Image.fromarray(arr), "PNG"))
    assert img.mode == "RGB"
    assert abs(img.getpixel((0, 0))[0] - 128) <= 1


def test_cmyk_and_other_modes():
    cmyk = Image.new("CMYK", (10, 10), (0, 255, 255, 0))  # red
    img = open_image(save(cmyk, "JPEG"))
    r, g, b = img.getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60
    for mode in ("1", "L", "I", "F", "YCbCr"):
        assert to_rgb(Image.new(mode, (3, 3))).mode == "RGB"


@pytest.mark.parametrize(
    "orientation,expected", [(1, (60, 40)), (6, (40, 60)), (8, (40, 60)), (3, (60, 40))]
)
def test_exif_orientation_applied(orientation, expected):
    image = photo_like(60, 40)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = open_image(save(image, "JPEG", exif=exif.tobytes()))
    assert img.size == expected


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    buf.seek(0)
    r, g, _ = open_image(buf).getpixel((4, 4))
    assert r > 200 and g < 50


def test_draft_decodes_at_least_twice_the_input():
    big = photo_like(400, 300).resize((4000, 3000))  # 12 MP without 36M random draws
    img = open_image(save(big, "JPEG", quality=90))
    assert min(img.size) >= 448 and img.size[0] < 4000
    exact = open_image(save(big, "JPEG", quality=90), draft=False)
    assert exact.size == (4000, 3000)


def test_bad_files_give_reasons(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        open_image(empty)

    text = tmp_path / "notes.jpg"
    text.write_text("이것은 사진이 아니다", encoding="utf-8")
    with pytest.raises(ImageError, match="not an image"):
        open_image(text)

    data = save(photo_like(300, 200), "JPEG").getvalue()
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated|corrupt"):
        open_image(truncated)

    png = save(photo_like(300, 200), "PNG").getvalue()
    broken = tmp_path / "broken.png"
    broken.write_bytes(png[:60] + b"\x00" * 200 + png[260:])
    with pytest.raises(ImageError):
        open_image(broken)

    with pytest.raises(ImageError, match="megapixels"):
        open_image(save(photo_like(300, 200), "PNG"), max_pixels=10_000)

    with pytest.raises(ImageError, match="cannot read"):
        open_image(tmp_path / "missing.jpg")


def test_prompt_and_nfc():
    nfd = "\u1100\u1161\u11bc\u110b\u1161\u110c\u1175"  # 강아지, decomposed
    assert apply_prompt(nfd) == "이것은 강아지 이다."
    assert apply_prompt(" dog ", None) == "dog"
    assert apply_prompt("바다", "{} 사진") == "바다 사진"


# Thin strips in every format: before the bounded resize, a 1x65000 PNG took 13.8 GB.
THIN = [
    ("PNG", 1, 65000),
    ("PNG", 65000, 1),
    ("GIF", 3, 65000),
    ("TIFF", 2, 65000),
    ("WEBP", 1, 16383),  # WebP's largest side
    ("JPEG", 1, 65000),
    ("HEIF", 64, 16384),
]
_MEMORY_SCRIPT = """
import io, resource, sys
from PIL import Image
from koclip.images.preprocess import open_image, preprocess, _register_heif

def vm_bytes():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize"))

_register_heif()
fmt, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = io.BytesIO()
Image.new("RGB", (w, h), (200, 30, 60)).save(buf, fmt)
data = buf.getvalue()
# A regression fails with MemoryError here instead of taking the machine's memory.
limit = vm_bytes() + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels = preprocess(open_image(io.BytesIO(data)))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(pixels.shape, (after - before) // 1024)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "width", "height"), THIN)
def test_thin_images_decode_in_bounded_memory(fmt, width, height):
    import subprocess
    import sys

    if fmt == "HEIF":
        pytest.importorskip("pillow_heif")
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, fmt, str(width), str(height)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shape, grown_mb = done.stdout.rsplit(maxsplit=1)
    assert shape.replace(" ", "") == "(224,224,3)"
    assert int(grown_mb) < 200, f"{fmt} {width}x{height} grew RSS by {grown_mb} MB"


def whole_resize_then_crop(image: Image.Image, size: int = 224) -> np.ndarray:
    """The transform done the obvious way: the whole shortest-side resize, then the crop."""
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    full = image.resize(new, Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    return np.asarray(full.crop((left, top, left + size, top + size)))


@pytest.mark.parametrize("size", [(4, 1000), (1000, 4), (7, 2000), (3, 900)])
def test_thin_image_crop_matches_the_whole_resize(size):
    from koclip.images.preprocess import EXACT_RESIZE_ASPECT, resize_and_crop

    image = photo_like(*size)
    assert max(size) / min(size) > EXACT_RESIZE_ASPECT  # the cropped path, still checkable
    diff = np.abs(np.asarray(resize_and_crop(image), np.int16) - whole_resize_then_crop(image))
    assert diff.max() <= 4 and diff.mean() < 0.5  # 8-bit rounding between the two passes


def test_wide_conversions_run_in_bands():
    from koclip.images.preprocess import _BAND_PIXELS

    rows = 3 * (_BAND_PIXELS // 64) + 5  # several bands of a 64-pixel-wide image
    rgba = Image.new("RGBA", (64, rows), (255, 0, 0, 0))
    rgba.putpixel((3, rows - 1), (0, 0, 255, 255))
    rgb = to_rgb(rgba)
    assert rgb.size == (64, rows)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((3, rows - 1)) == (0, 0, 255)
    grey = Image.fromarray(np.full((rows, 64), 65535, np.uint16))
    assert to_rgb(grey).getpixel((10, rows - 2)) == (255, 255, 255)


def test_default_pixel_limit_guards_every_caller():
    from koclip.errors import ImageTooLargeError
    from koclip.images.preprocess import MAX_PIXELS

    assert MAX_PIXELS == 100_000_000
    # A header that claims 15000 x 8000 pixels: refused before any pixel is decoded.
    header = save(Image.new("L", (1, 1)), "PNG").getvalue()
    ihdr = header.index(b"IHDR")
    import struct
    import zlib

    body = b"IHDR" + struct.pack(">II", 15000, 8000) + header[ihdr + 12 : ihdr + 17]
    forged = header[: ihdr - 4] + struct.pack(">I", 13) + body
    forged += struct.pack(">I", zlib.crc32(body)) + header[ihdr + 21 :]
    with pytest.raises(ImageTooLargeError, match="megapixels") as info:
        open_image(io.BytesIO(forged))
    assert "--max-megapixels" not in str(info.value)  # a flag only `index` has
