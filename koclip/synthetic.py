"""Photo-like generated images: the varied set that quantisation is checked on (not noise).

Real photos have most of their energy at low spatial frequencies (a ~1/f amplitude spectrum),
smooth colour gradients, hard-edged objects and some fine texture. Each image here mixes those:
a coloured 1/f field, a sky-to-ground gradient, a few filled shapes and a little grain, with
the mix drawn per image from a seeded generator, so the set is varied and reproducible.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def _pink_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) in [0, 1]: three channels of 1/f noise with correlated colour."""
    freqs = np.fft.fftfreq(size)
    radius = np.hypot(freqs[:, None], freqs[None, :])
    radius[0, 0] = 1.0
    amplitude = 1.0 / radius ** rng.uniform(0.8, 1.4)
    out = np.empty((size, size, 3), np.float32)
    base = rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))
    for ch in range(3):
        own = rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))
        field = np.fft.ifft2((base + 0.5 * own) * amplitude).real
        out[..., ch] = (field - field.min()) / (np.ptp(field) + 1e-9)
    return out


def photo_like(n: int, size: int = 256, seed: int = 0) -> list[Image.Image]:
    """`n` RGB images of `size` x `size`, each a different mix of photo-like structure."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        field = _pink_field(rng, size)
        top, bottom = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
        ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        gradient = top * (1 - ramp) + bottom * ramp
        mix = rng.uniform(0.2, 0.8)
        pixels = mix * field + (1 - mix) * gradient
        image = Image.fromarray(np.uint8(np.clip(pixels, 0, 1) * 255), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(0, 6)):
            x0, y0 = rng.integers(0, size, 2)
            w, h = rng.integers(size // 10, size // 2, 2)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        grain = rng.normal(0, rng.uniform(0, 8), (size, size, 3))
        arr = np.clip(np.asarray(image, np.float32) + grain, 0, 255)
        images.append(Image.fromarray(arr.astype(np.uint8), "RGB"))
    return images
