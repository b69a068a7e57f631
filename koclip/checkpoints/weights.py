"""Reading a checkpoint's weights into our parameter tree, one tower at a time when possible."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from koclip.checkpoints.cache import (
    converted_paths,
    expected_shapes,
    read_converted,
    write_converted,
)
from koclip.checkpoints.hub import CheckpointFiles, shard_files
from koclip.checkpoints.params import params_from_flax, params_from_pt, select, towers_in
from koclip.checkpoints.safetensors_mmap import SafetensorsFormatError, open_mmap
from koclip.errors import CheckpointError
from koclip.phases import phase


def load_params(
    files: CheckpointFiles, towers: Iterable[str], cache_root: Path | None = None
) -> dict[str, Any]:
    """Read the parameters of the towers asked for, as float32 numpy arrays.

    The first load of a checkpoint converts each tower into our layout in a safetensors cache
    (keyed by the checkpoint's fingerprint); later loads memory-map just the towers asked for.
    """
    towers = tuple(sorted(set(towers)))
    if set(towers) - {"text", "vision"} or not towers:
        raise ValueError(f"towers must be a non-empty subset of ('text', 'vision'), not {towers}")
    cache = converted_paths(files.fingerprint, cache_root)
    if cache is not None and all(cache[t].is_file() for t in towers):
        try:
            return read_converted(cache, towers, files.config, cache_root)
        except CheckpointError:
            pass  # a damaged cache entry is rebuilt from the checkpoint below
    with phase(f"converting {files.model_id}'s weights for fast loading (once per model)"):
        params = _read_original(files, towers, cache_root)
        if cache is not None:
            for tower in towers_in(params):
                write_converted(select(params, (tower,)), cache[tower])
    return select(params, towers)


def _read_original(
    files: CheckpointFiles, towers: tuple[str, ...], cache_root: Path | None
) -> dict[str, Any]:
    shapes = expected_shapes(files.config, cache_root)
    source = str(files.weights)
    name = files.weights.name
    if name == "flax_model.msgpack":
        # msgpack cannot be read in part: take both towers and cache both.
        return params_from_flax(_read_msgpack(files.weights), shapes, ("text", "vision"), source)
    if name.endswith(".safetensors") or name.endswith(".index.json"):
        tensors = _read_safetensors(files.weights)
    elif name == "pytorch_model.bin":
        tensors = _read_torch_bin(files.weights)
    else:
        raise CheckpointError(f"{source}: unsupported weights file")
    return params_from_pt(tensors, shapes, files.config.vision.kind, towers, source)


def _read_msgpack(path: Path) -> dict[str, Any]:
    from flax import serialization

    try:
        data = path.read_bytes()
        tree = serialization.msgpack_restore(data)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # msgpack raises several unrelated types on damaged files
        raise CheckpointError(f"{path}: corrupt or truncated Flax msgpack ({exc})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: not a Flax parameter tree")
    # Some Flax checkpoints wrap the tree as {"params": ...}.
    if set(tree) == {"params"}:
        tree = tree["params"]
    return tree


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A single or sharded safetensors checkpoint as zero-copy views."""
    out: dict[str, np.ndarray] = {}
    for f in shard_files(path):
        try:
            out.update(open_mmap(f))
        except (SafetensorsFormatError, OSError, ValueError) as exc:
            raise CheckpointError(f"{f}: corrupt or unreadable safetensors ({exc})") from None
    return out


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading pytorch_model.bin needs torch; install it with "
            "`pip install 'koclip-search[torch]'` or convert the checkpoint to safetensors"
        ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or unreadable PyTorch checkpoint ({exc})") from None
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
