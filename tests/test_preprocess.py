"""Image decoding and the CLIP transform, proven against transformers' CLIPImageProcessor."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from koclip import ImageError, open_image, preprocess
from koclip.preprocess import apply_prompt, to_rgb


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
