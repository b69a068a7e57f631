"""Zero-copy safetensors reading: numpy views straight onto a memory-mapped file.

The safetensors format is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw little-endian data. Mapping the file and
viewing those ranges means a tower is paged in from the page cache once, when it is used,
instead of being copied through Python first.

Kept because the `safetensors` package cannot do this: its `safe_open(..., framework="numpy")`
copies every tensor it hands out, into anonymous memory, where this module's views stay
file-backed pages the kernel can share and drop (`python bench/safetensors_read.py` compares
the two readers).

Writing uses the package (`safetensors.numpy.save_file`, in `koclip.checkpoints.cache`).
"""

from __future__ import annotations

import json
import mmap
import os
import struct

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # viewed as raw bits, widened to float32 by `_bf16_to_f32`
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 << 20


class SafetensorsFormatError(ValueError):
    """The file is not valid safetensors (truncated, corrupt header, bad offsets)."""


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, dict], dict[str, str], int]:
    """(tensors, metadata, data_start) from a safetensors file's header."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise SafetensorsFormatError("file shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER:
            raise SafetensorsFormatError(f"implausible header length {length}")
        raw = fh.read(length)
    if len(raw) != length:
        raise SafetensorsFormatError("truncated header")
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SafetensorsFormatError(f"corrupt header ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    return header, metadata, 8 + length


def open_mmap(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Every tensor in `path` as a read-only numpy view of the mapped file (no data is read)."""
    header, _, start = read_header(path)
    size = os.path.getsize(path)
    if size == 0:
        raise SafetensorsFormatError("empty file")
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    out = {}
    for name, info in header.items():
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsFormatError(f"bad header entry for {name!r}") from None
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dtype.itemsize or begin < 0 or start + end > size:
            raise SafetensorsFormatError(f"tensor {name!r}: byte range does not fit the file")
        out[name] = np.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin).reshape(
            shape
        )
        if info["dtype"] == "BF16":
            out[name] = _bf16_to_f32(out[name])
    return out


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)
