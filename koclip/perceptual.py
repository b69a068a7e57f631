"""Perceptual fingerprints of a photo's pixels, for telling renditions of one picture apart
from other pictures whatever the model's weights (used by the indexer and `duplicates`).

- `phash`: 64-bit DCT hash: the signs of the 8x8 lowest frequencies of a 32x32 grey
  thumbnail's 2-D DCT-II against their median (Zauner's pHash, as the `imagehash` library
  builds it; the DC term is left out, so the top bit is always 0). Resizing, recompression,
  re-encoding and colour shifts move it by a few bits; unrelated pictures sit ~32 bits apart.
  Cheap to compare, so it finds candidates.
- `thumbnail`: a 24x24 grey thumbnail. `residual` aligns two of them (a crop of up to ~11%,
  shifted) and reports the worst local difference after normalising brightness and contrast:
  small for renditions, large where a subject moved (bursts) or the picture differs.

Both are computed after a flat border is trimmed, so a frame around a picture is ignored.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIDE = 32
LOW = 8
THUMB_SIDE = 24
_BORDER_STD = 3.0  # a row or column this flat, and the edge's colour, is frame, not picture
_MAX_TRIM = 0.2  # never trim more than this share of a side
_SCALES = (1.0, 1.06, 1.12)  # crops tried when aligning two thumbnails
_BLOCK = 4  # residual is the worst mean over BLOCK x BLOCK cells


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT = _dct_matrix(HASH_SIDE)


def grey_trimmed(image: Image.Image) -> Image.Image:
    """The image in grey levels without a flat frame (an added border)."""
    grey = np.asarray(image.convert("L"), dtype=np.float32)
    return Image.fromarray(np.rint(_trim_border(grey)).astype(np.uint8))


def phash(image: Image.Image | None = None, *, grey: Image.Image | None = None) -> int:
    """The 64-bit perceptual hash of an (oriented) image, as a signed int64 (SQLite INTEGER)."""
    grey = grey if grey is not None else grey_trimmed(image)
    small = grey.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX)
    low = (_DCT @ np.asarray(small, np.float64) @ _DCT.T)[:LOW, :LOW].ravel()
    bits = low[1:] > np.median(low[1:])  # the DC term says only how bright the photo is
    value = int(np.packbits(np.concatenate([[False], bits])).view(">u8")[0])
    return value - (1 << 64) if value >= 1 << 63 else value


def thumbnail(image: Image.Image | None = None, *, grey: Image.Image | None = None) -> bytes:
    """The THUMB_SIDE x THUMB_SIDE grey thumbnail `residual` compares (row-major bytes)."""
    grey = grey if grey is not None else grey_trimmed(image)
    return grey.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX).tobytes()


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Bits that differ between int64 hashes (elementwise)."""
    x = np.bitwise_xor(np.asarray(a, np.int64), np.asarray(b, np.int64)).view(np.uint64)
    as_bytes = np.ascontiguousarray(x).view(np.uint8).reshape(*np.shape(x), 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)


def residual(a: bytes, b: bytes, *, good_enough: float = 0.0) -> float:
    """How differently two thumbnails look at their best alignment: the largest mean absolute
    difference over 4x4 cells, in standard deviations (0 = the same picture). Stops at the
    first alignment (of two directions) that is within `good_enough`."""
    ta, tb = _as_array(a), _as_array(b)
    best = np.inf
    for x, y in ((ta, tb), (tb, ta)):
        target = _normalised(y[None])[0, 2:-2, 2:-2]
        diff = np.abs(_normalised(_crops(x))[:, 2:-2, 2:-2] - target)
        n = diff.shape[1] // _BLOCK
        cells = diff.reshape(len(diff), n, _BLOCK, n, _BLOCK).mean(axis=(2, 4))
        best = min(best, float(cells.max(axis=(1, 2)).min()))
        if best <= good_enough:
            break
    return best


def _as_array(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, np.uint8).reshape(THUMB_SIDE, THUMB_SIDE)


def _normalised(stack: np.ndarray) -> np.ndarray:
    """Each image of a stack at mean 0, standard deviation 1 (brightness and contrast gone)."""
    x = stack.astype(np.float32)
    x -= x.mean(axis=(1, 2), keepdims=True)
    return x / (x.std(axis=(1, 2), keepdims=True) + 1e-3)


def _crops(t: np.ndarray) -> np.ndarray:
    """`t` itself and cut down by each of _SCALES (centred and shifted), resized back."""
    im = Image.fromarray(t)
    side = THUMB_SIDE
    out = [t]
    for scale in _SCALES[1:]:
        w = side / scale
        margin = (side - w) / 2
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                ox, oy = margin + dx * margin, margin + dy * margin
                box = (ox, oy, ox + w, oy + w)
                out.append(np.asarray(im.resize((side, side), Image.Resampling.BILINEAR, box=box)))
    return np.stack(out)


def _trim_border(grey: np.ndarray) -> np.ndarray:
    """`grey` without a flat frame; at most _MAX_TRIM of a side."""
    h, w = grey.shape
    if h < 8 or w < 8:
        return grey
    # A frame goes all round in one colour; a flat (or clipped) area at one edge is picture.
    edges = (grey[0], grey[-1], grey[:, 0], grey[:, -1])
    means = [float(e.mean()) for e in edges]
    if not all(np.std(e) < _BORDER_STD for e in edges) or max(means) - min(means) > 6:
        return grey

    def flat(lines: np.ndarray) -> int:
        edge = lines[0].mean()
        n, limit = 0, int(len(lines) * _MAX_TRIM)
        while n < limit and lines[n].std() < _BORDER_STD and abs(lines[n].mean() - edge) < 6:
            n += 1
        return n

    top, bottom = flat(grey), flat(grey[::-1])
    left, right = flat(grey.T), flat(grey.T[::-1])
    return grey[top : h - bottom, left : w - right]
