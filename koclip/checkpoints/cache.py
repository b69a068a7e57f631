"""The converted-weights cache: each tower once in our layout, memory-mapped on later loads.

A checkpoint is read in its own format once (msgpack cannot be read in part) and written as
one safetensors file per tower, keyed by its fingerprint; later loads map just the towers
asked for. Beside them lives each config's table of parameter shapes, traced from the Flax
module with `jax.eval_shape` the first time a checkpoint of that config is converted. A one-shot
`koclip-search search` checks the mapped tower against that table instead of tracing
RoBERTa-large (over a second) or even importing JAX; a missing or damaged table is traced again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from koclip.checkpoints.params import Path_, params_from_flax
from koclip.checkpoints.safetensors_mmap import SafetensorsFormatError, open_mmap
from koclip.config import KoCLIPConfig
from koclip.errors import CheckpointError
from koclip.files import atomic_path
from koclip.tree import flatten, unflatten

SHAPES_FORMAT = 1  # bump when the module's parameter tree changes


def default_cache_root() -> Path:
    base = os.environ.get("KOCLIP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "koclip-search"
    )
    return Path(base)


def _converted_dir(cache_root: Path | None) -> Path:
    return (cache_root if cache_root is not None else default_cache_root()) / "converted"


def converted_paths(fingerprint: str, cache_root: Path | None) -> dict[str, Path] | None:
    """Each tower's cache file, or None when the cache is turned off."""
    if os.environ.get("KOCLIP_NO_CONVERTED_CACHE"):
        return None
    root = _converted_dir(cache_root)
    return {t: root / f"{fingerprint}.{t}.safetensors" for t in ("text", "vision")}


# --- parameter shapes ------------------------------------------------------------------------


def _config_json(config: KoCLIPConfig) -> dict[str, Any]:
    return {"format": SHAPES_FORMAT, **dataclasses.asdict(config)}


def shapes_path(config: KoCLIPConfig, cache_root: Path | None = None) -> Path:
    blob = json.dumps(_config_json(config), sort_keys=True).encode()
    return _converted_dir(cache_root) / f"shapes-{hashlib.sha256(blob).hexdigest()[:24]}.json"


def cached_shapes(
    config: KoCLIPConfig, cache_root: Path | None = None
) -> dict[Path_, tuple[int, ...]] | None:
    """The stored shape table of `config`; None when missing or damaged (never traces)."""
    try:
        data = json.loads(shapes_path(config, cache_root).read_text(encoding="utf-8"))
        if data["config"] != json.loads(json.dumps(_config_json(config))):
            return None
        return {tuple(k.split("/")): tuple(int(d) for d in v) for k, v in data["shapes"].items()}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None


def expected_shapes(
    config: KoCLIPConfig, cache_root: Path | None = None
) -> dict[Path_, tuple[int, ...]]:
    """Every parameter's path and shape: the stored table, else traced (imports JAX) and stored."""
    shapes = cached_shapes(config, cache_root)
    if shapes is not None:
        return shapes
    from koclip.model import param_shapes

    shapes = param_shapes(config)
    data = {
        "config": _config_json(config),
        "shapes": {"/".join(k): list(v) for k, v in sorted(shapes.items())},
    }
    blob = json.dumps(data).encode("utf-8")
    _write_atomic(shapes_path(config, cache_root), lambda tmp: Path(tmp).write_bytes(blob))
    return shapes


# --- converted towers ------------------------------------------------------------------------


def read_converted(
    paths: Mapping[str, Path],
    towers: tuple[str, ...],
    config: KoCLIPConfig,
    cache_root: Path | None,
) -> dict[str, Any]:
    """The cached towers, checked against the stored shapes; CheckpointError if not usable."""
    shapes = cached_shapes(config, cache_root)
    if shapes is None:
        raise CheckpointError(f"no parameter shapes stored for {paths[towers[0]]}")
    flat: dict[Path_, np.ndarray] = {}
    for tower in towers:
        try:
            tensors = open_mmap(paths[tower])
        except (SafetensorsFormatError, OSError, ValueError) as exc:
            raise CheckpointError(f"{paths[tower]}: damaged conversion cache ({exc})") from None
        flat.update({tuple(k.split("/")): v for k, v in tensors.items()})
    return params_from_flax(unflatten(flat), shapes, towers, str(paths[towers[0]]))


def write_converted(params: Mapping[str, Any], path: Path) -> None:
    """Best effort, atomic: a cache that cannot be written only costs speed."""
    from safetensors.numpy import save_file

    # save_file writes an array's buffer as it lies: a transposed kernel must be made C-ordered.
    flat = {
        "/".join(k): np.ascontiguousarray(v, np.float32) for k, v in flatten(dict(params)).items()
    }
    _write_atomic(path, lambda tmp: save_file(flat, tmp, metadata={"format": "koclip-search"}))


def _write_atomic(path: Path, write: Callable[[str], Any]) -> None:
    """`write(tmp)` then an atomic replace of `path`; an OSError only leaves the old file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            write(str(tmp))
    except OSError:
        pass
