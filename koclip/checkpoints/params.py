"""Checkpoint keys to our parameter tree: one table of renaming rules and one honest error.

Our parameter names are those of the hub's Flax `hybrid-clip` checkpoints, so a msgpack tree
maps by identity. PyTorch-layout checkpoints (`vision-text-dual-encoder`, safetensors or
`.bin`) are renamed by rule: the *classic* layout (what transformers 4 saved:
`vision_model.vision_model.*` for CLIP, `vision_model.encoder.layer.N.attention.attention.query`
for ViT) is our path with dots and PyTorch's leaf names; the flat layout transformers 5 saves
differs from it by the prefixes in `FLAT_LAYOUT`. Every missing, unexpected and mis-shaped key
is collected, then raised once. Expected shapes come from the module (`koclip.checkpoints.cache`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from koclip.errors import CheckpointError, KoCLIPError
from koclip.tree import flatten, unflatten

Path_ = tuple[str, ...]
Shapes = Mapping[Path_, tuple[int, ...]]

# The top-level parameter keys of each tower; `logit_scale` belongs to both.
TOWER_KEYS: dict[str, tuple[str, str]] = {
    "text": ("text_model", "text_projection"),
    "vision": ("vision_model", "visual_projection"),
}

# Our leaf names -> PyTorch's (`bias` is the same in both).
_PT_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight"}

# (classic prefix, transformers-5 flat prefix) per vision kind; `{n}` is a layer number and
# the first rule that matches wins, in either direction.
FLAT_LAYOUT: dict[str, tuple[tuple[str, str], ...]] = {
    "clip": (("vision_model.vision_model.", "vision_model."),),
    "vit": tuple(
        (f"vision_model.encoder.layer.{{n}}.{classic}", f"vision_model.layers.{{n}}.{flat}")
        for classic, flat in (
            ("attention.attention.query.", "attention.q_proj."),
            ("attention.attention.key.", "attention.k_proj."),
            ("attention.attention.value.", "attention.v_proj."),
            ("attention.output.dense.", "attention.o_proj."),
            ("intermediate.dense.", "mlp.fc1."),
            ("output.dense.", "mlp.fc2."),
            ("", ""),
        )
    ),
}

# Buffers some PyTorch checkpoints carry that are not parameters.
_IGNORED_PT_KEYS = re.compile(r".*\.(position_ids|token_type_ids)$")


def tower_of(top_key: str) -> str | None:
    return next((t for t, keys in TOWER_KEYS.items() if top_key in keys), None)


def select(params: Mapping[str, Any], towers: Iterable[str]) -> dict[str, Any]:
    """The top-level entries of the towers asked for, and the shared ones (`logit_scale`)."""
    return {k: v for k, v in params.items() if tower_of(k) in (*towers, None)}


def towers_in(params: Mapping[str, Any]) -> set[str]:
    return {t for k in params if (t := tower_of(k)) is not None}


def loaded_towers(params: Mapping[str, Any]) -> frozenset[str]:
    """The towers whose parameters are all in `params`."""
    return frozenset(t for t, keys in TOWER_KEYS.items() if all(k in params for k in keys))


def tower_params(params: Mapping[str, Any], tower: str) -> dict[str, Any]:
    """One tower's top-level parameters; KoCLIPError if that tower was not loaded."""
    if tower not in loaded_towers(params):
        raise KoCLIPError(
            f"the {tower} tower was not loaded; pass towers=(..., {tower!r}) when loading"
        )
    return {k: params[k] for k in TOWER_KEYS[tower]}


def pt_key(path: Path_) -> str:
    """Our parameter path -> the classic PyTorch state-dict key."""
    return ".".join((*path[:-1], _PT_LEAVES.get(path[-1], path[-1])))


def relayout(key: str, vision_kind: str, to_flat: bool) -> str:
    """A classic PyTorch key -> transformers-5's flat one (`to_flat`), or back."""
    for classic, flat in FLAT_LAYOUT[vision_kind]:
        source, target = (classic, flat) if to_flat else (flat, classic)
        pattern = re.escape(source).replace(re.escape("{n}"), r"(\d+)")
        m = re.match(pattern, key)
        if m:
            return target.replace("{n}", "".join(m.groups())) + key[m.end() :]
    return key


def relayout_array(path: Path_, value: np.ndarray, to_pt: bool = False) -> np.ndarray:
    """A PyTorch tensor in the layout of our parameter at `path` (or back, `to_pt`)."""
    if path[-1] != "kernel" or value.ndim not in (2, 4):
        return value
    if value.ndim == 2:  # Linear (out, in) <-> Dense (in, out)
        return value.T
    # Conv (out, in, kh, kw) <-> (kh, kw, in, out)
    return value.transpose(3, 2, 0, 1) if to_pt else value.transpose(2, 3, 1, 0)


class KeyReport:
    """Collects every problem with a checkpoint's keys, then raises once."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.misshaped: list[str] = []

    def raise_if_any(self) -> None:
        if not (self.missing or self.unexpected or self.misshaped):
            return
        lines = [f"checkpoint {self.source} does not fit the model:"]
        for title, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("wrong shape", self.misshaped),
        ):
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines.extend(f"    {k}" for k in sorted(keys))
        raise CheckpointError("\n".join(lines))


def _of_towers(shapes: Shapes, towers: Iterable[str]) -> dict[Path_, tuple[int, ...]]:
    towers = tuple(towers)
    return {p: s for p, s in shapes.items() if tower_of(p[0]) in (*towers, None)}


def params_from_flax(
    tree: Mapping[str, Any], shapes: Shapes, towers: Iterable[str], source: str
) -> dict[str, Any]:
    """Check a hybrid-clip parameter tree against the model's `shapes`; keep the towers asked for."""
    expected = _of_towers(shapes, towers)
    flat = flatten(dict(tree))
    report = KeyReport(source)
    out: dict[Path_, np.ndarray] = {}
    for path, value in flat.items():
        if path not in shapes:
            report.unexpected.append("/".join(path))
        elif path in expected:
            arr = _fit_scalar(np.asarray(value), expected[path])
            if tuple(arr.shape) != expected[path]:
                report.misshaped.append(
                    f"{'/'.join(path)}: checkpoint {tuple(arr.shape)}, model {expected[path]}"
                )
            out[path] = arr
    report.missing.extend("/".join(p) for p in expected if p not in flat)
    report.raise_if_any()
    return unflatten({k: _float32(v) for k, v in out.items()})


def params_from_pt(
    tensors: Mapping[str, Any],
    shapes: Shapes,
    vision_kind: str,
    towers: Iterable[str],
    source: str,
) -> dict[str, Any]:
    """Map a PyTorch-layout state dict (lazy mapping of key -> array-like) onto our tree.

    Only the tensors of the towers asked for are materialised, so a memory-mapped safetensors
    file costs the memory of one tower.
    """
    expected = _of_towers(shapes, towers)
    wanted = {pt_key(p): p for p in expected}
    known = {pt_key(p) for p in shapes}
    report = KeyReport(source)
    out: dict[Path_, np.ndarray] = {}
    for key in tensors.keys():
        if _IGNORED_PT_KEYS.match(key):
            continue
        classic = key if key in known else relayout(key, vision_kind, to_flat=False)
        if classic not in known:
            report.unexpected.append(key)
            continue
        path = wanted.get(classic)
        if path is None:
            continue  # the other tower: never read
        arr = _fit_scalar(relayout_array(path, np.asarray(tensors[key])), expected[path])
        if tuple(arr.shape) != expected[path]:
            report.misshaped.append(
                f"{key}: checkpoint {tuple(arr.shape)}, model {expected[path]} (after transposing)"
            )
        out[path] = arr
    report.missing.extend(pt_key(p) for p in expected if p not in out)
    report.raise_if_any()
    return unflatten({k: _float32(v) for k, v in out.items()})


def params_to_pt(params: Mapping[str, Any], layout: str = "flat") -> dict[str, np.ndarray]:
    """Our tree -> a PyTorch-layout state dict (`layout` 'classic' or 'flat', transformers 5)."""
    flat = flatten(dict(params))
    kind = "vit" if ("vision_model", "embeddings", "cls_token") in flat else "clip"
    out = {}
    for path, value in flat.items():
        key = pt_key(path)
        if layout == "flat":
            key = relayout(key, kind, to_flat=True)
        out[key] = np.ascontiguousarray(relayout_array(path, np.asarray(value), to_pt=True))
    return out


def _fit_scalar(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    # logit_scale: safetensors and some exporters store scalars with shape (1,).
    return arr.reshape(()) if shape == () and arr.shape == (1,) else arr


def _float32(x: np.ndarray) -> np.ndarray:
    # Checkpoints may be fp16/bf16; we compute in fp32 (bf16 is slower on CPU, measured).
    return np.asarray(x, dtype=np.float32)
