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


def residuals(
    a: np.ndarray, b: np.ndarray, *, good_enough: float = 0.0, chunk: int = 512
) -> np.ndarray:
    """`residual` of each pair of thumbnails (row k of `a` with row k of `b`; rows hold
    THUMB_SIDE * THUMB_SIDE uint8), every pair at once. Alignments are tried in stages: both
    uncut, then `a`'s crops, then `b`'s; a pair leaves at the first stage within
    `good_enough` (its value is then an upper bound, as `residual`'s early stop gives), so
    renditions cost one comparison and only the doubtful pairs are cropped."""
    a = np.asarray(a, np.uint8).reshape(-1, THUMB_SIDE, THUMB_SIDE)
    b = np.asarray(b, np.uint8).reshape(-1, THUMB_SIDE, THUMB_SIDE)
    na, nb = _normalised_stack(a[:, None]), _normalised_stack(b[:, None])
    out = _worst_cells(na, nb[:, 0]).astype(np.float64)
    todo = np.flatnonzero(out > good_enough)
    for cut, target in ((a, nb), (b, na)):
        for start in range(0, len(todo), chunk):
            rows = todo[start : start + chunk]
            crops = _normalised_stack(_cut(cut[rows]))
            out[rows] = np.minimum(out[rows], _worst_cells(crops, target[rows, 0]))
        todo = todo[out[todo] > good_enough]
    return out


def _normalised_stack(stack: np.ndarray) -> np.ndarray:
    """`_normalised` over the last two axes of an (n, crops, side, side) stack."""
    x = stack.astype(np.float32)
    x -= x.mean(axis=(2, 3), keepdims=True)
    return x / (x.std(axis=(2, 3), keepdims=True) + 1e-3)


def _worst_cells(crops: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per pair: the best crop's worst BLOCK x BLOCK cell of |crop - target| (margins cut)."""
    diff = np.abs(crops[:, :, 2:-2, 2:-2] - target[:, None, 2:-2, 2:-2])
    m, c, side = diff.shape[0], diff.shape[1], diff.shape[2]
    n = side // _BLOCK
    cells = diff.reshape(m, c, n, _BLOCK, n, _BLOCK).mean(axis=(3, 5))
    return cells.max(axis=(2, 3)).min(axis=1)


def crop_stack(thumbs: np.ndarray) -> np.ndarray:
    """`_crops` of each THUMB_SIDE x THUMB_SIDE uint8 thumbnail of an (n, side, side) stack,
    as (n, crops, side, side) uint8: equal, pixel for pixel, to PIL's bilinear resize of each
    box (the same coefficients, the same 8-bit fixed point between its two passes)."""
    thumbs = np.asarray(thumbs, np.uint8)
    return np.concatenate([thumbs[:, None], _cut(thumbs)], axis=1)


def _cut(thumbs: np.ndarray) -> np.ndarray:
    """The cut crops of `crop_stack` (all but the thumbnail itself)."""
    rows, cols = _crop_matrices()
    n, side, crops = len(thumbs), THUMB_SIDE, len(cols)
    t = thumbs.astype(np.float64)  # integer sums stay exact in float64
    # horizontal pass, every crop at once: (n * side, side) @ (side, crops * side)
    h = t.reshape(n * side, side) @ cols.transpose(2, 0, 1).reshape(side, crops * side)
    h = _fixed_to_u8(h).reshape(n, side, crops, side).transpose(0, 2, 1, 3)
    return _fixed_to_u8(np.matmul(rows[None], h.astype(np.float64)))  # vertical pass


_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images (libImaging/Resample.c)


def _fixed_to_u8(sums: np.ndarray) -> np.ndarray:
    """Pillow's clip8, (sum + half) >> PRECISION_BITS, in place on exact float64 sums. The
    bilinear weights are never negative, so the sums lie in 0..255 << PRECISION_BITS and
    truncating to uint8 is the floor Pillow's shift takes."""
    sums += float(1 << (_PRECISION_BITS - 1))
    sums *= 1.0 / float(1 << _PRECISION_BITS)
    return sums.astype(np.uint8)


_MATRICES: tuple[np.ndarray, np.ndarray] | None = None


def _crop_matrices() -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): per cut crop of `_crops` (in its order), the (side x side) fixed-point
    weights of the vertical and horizontal bilinear passes."""
    global _MATRICES
    if _MATRICES is None:
        side = THUMB_SIDE
        rows, cols = [], []
        for box in _crop_boxes():
            cols.append(_bilinear_weights(side, box[0], box[2], side))
            rows.append(_bilinear_weights(side, box[1], box[3], side))
        _MATRICES = (np.stack(rows), np.stack(cols))
    return _MATRICES


def _crop_boxes() -> list[tuple[float, float, float, float]]:
    """The boxes `_crops` cuts (after the uncut thumbnail itself)."""
    side = THUMB_SIDE
    boxes = []
    for scale in _SCALES[1:]:
        w = side / scale
        margin = (side - w) / 2
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                ox, oy = margin + dx * margin, margin + dy * margin
                boxes.append((ox, oy, ox + w, oy + w))
    return boxes


def _bilinear_weights(in_size: int, in0: float, in1: float, out_size: int) -> np.ndarray:
    """Pillow's precompute_coeffs for the bilinear filter, as an (out, in) matrix of its
    fixed-point integer weights (normalize_coeffs_8bpc); the box arrives there as C floats."""
    lo, hi = np.float32(in0), np.float32(in1)
    in0 = float(lo)
    scale = float(hi - lo) / out_size  # the width too is a C float
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    out = np.zeros((out_size, in_size))
    for xx in range(out_size):
        center = in0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        x = np.arange(xmin, xmax)
        w = np.maximum(0.0, 1.0 - np.abs((x - center + 0.5) / filterscale))
        total = w.sum()
        if total != 0.0:
            w = w / total
        fixed = np.where(
            w < 0,
            np.trunc(-0.5 + w * (1 << _PRECISION_BITS)),
            np.trunc(0.5 + w * (1 << _PRECISION_BITS)),
        )
        out[xx, xmin:xmax] = fixed
    return out


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
    crops = (im.resize((side, side), Image.Resampling.BILINEAR, box=b) for b in _crop_boxes())
    return np.stack([t, *(np.asarray(c) for c in crops)])


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
