"""Checkpoint keys to our parameter tree: one explicit key map and one honest error.

Our parameter names are those of the hub's Flax `hybrid-clip` checkpoints. PyTorch-layout
checkpoints (`vision-text-dual-encoder`, safetensors or `.bin`) are renamed by rule:
the *classic* layout (what transformers 4 saved: `vision_model.vision_model.*` for CLIP,
`vision_model.encoder.layer.N.attention.attention.query` for ViT) maps 1:1 onto our names;
the flat layout transformers 5 saves is first rewritten into the classic one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from koclip.config import KoCLIPConfig
from koclip.errors import CheckpointError
from koclip.tree import flatten, unflatten

Path_ = tuple[str, ...]

TOWER_PREFIXES = {
    "text": ("text_model", "text_projection"),
    "vision": ("vision_model", "visual_projection"),
}

# Buffers some PyTorch checkpoints carry that are not parameters.
_IGNORED_PT_KEYS = re.compile(r".*\.(position_ids|token_type_ids)$")

_VIT_V5_RULES = [
    (re.compile(r"^vision_model\.layers\.(\d+)\.attention\.q_proj\."), r"vision_model.encoder.layer.\1.attention.attention.query."),
    (re.compile(r"^vision_model\.layers\.(\d+)\.attention\.k_proj\."), r"vision_model.encoder.layer.\1.attention.attention.key."),
    (re.compile(r"^vision_model\.layers\.(\d+)\.attention\.v_proj\."), r"vision_model.encoder.layer.\1.attention.attention.value."),
    (re.compile(r"^vision_model\.layers\.(\d+)\.attention\.o_proj\."), r"vision_model.encoder.layer.\1.attention.output.dense."),
    (re.compile(r"^vision_model\.layers\.(\d+)\.mlp\.fc1\."), r"vision_model.encoder.layer.\1.intermediate.dense."),
    (re.compile(r"^vision_model\.layers\.(\d+)\.mlp\.fc2\."), r"vision_model.encoder.layer.\1.output.dense."),
    (re.compile(r"^vision_model\.layers\.(\d+)\."), r"vision_model.encoder.layer.\1."),
]  # fmt: skip

_CLIP_V5_RULE = (re.compile(r"^vision_model\.(?!vision_model\.)"), "vision_model.vision_model.")


def expected_shapes(config: KoCLIPConfig, towers: Iterable[str]) -> dict[Path_, tuple[int, ...]]:
    """Parameter paths and shapes of the towers asked for, computed from the config alone.

    Written out rather than traced (`jax.eval_shape` of RoBERTa-large costs over a second of
    cold start); tests/test_checkpoints.py proves it equal to the traced module's shapes.
    """
    towers = set(towers)
    out: dict[Path_, tuple[int, ...]] = {("logit_scale",): ()}
    if "text" in towers:
        out.update(_text_shapes(config))
    if "vision" in towers:
        out.update(_clip_shapes(config) if config.vision.kind == "clip" else _vit_shapes(config))
    return out


def _dense(prefix: Path_, d_in: int, d_out: int, bias: bool = True) -> dict[Path_, tuple[int, ...]]:
    out = {(*prefix, "kernel"): (d_in, d_out)}
    if bias:
        out[(*prefix, "bias")] = (d_out,)
    return out


def _norm(prefix: Path_, d: int) -> dict[Path_, tuple[int, ...]]:
    return {(*prefix, "scale"): (d,), (*prefix, "bias"): (d,)}


def _text_shapes(config: KoCLIPConfig) -> dict[Path_, tuple[int, ...]]:
    t = config.text
    d, ff = t.hidden_size, t.intermediate_size
    emb = ("text_model", "embeddings")
    out = {
        (*emb, "word_embeddings", "embedding"): (t.vocab_size, d),
        (*emb, "position_embeddings", "embedding"): (t.max_positions, d),
        (*emb, "token_type_embeddings", "embedding"): (t.type_vocab_size, d),
        **_norm((*emb, "LayerNorm"), d),
    }
    for i in range(t.num_layers):
        layer = ("text_model", "encoder", "layer", str(i))
        for name in ("query", "key", "value"):
            out.update(_dense((*layer, "attention", "self", name), d, d))
        out.update(_dense((*layer, "attention", "output", "dense"), d, d))
        out.update(_norm((*layer, "attention", "output", "LayerNorm"), d))
        out.update(_dense((*layer, "intermediate", "dense"), d, ff))
        out.update(_dense((*layer, "output", "dense"), ff, d))
        out.update(_norm((*layer, "output", "LayerNorm"), d))
    out.update(_dense(("text_model", "pooler", "dense"), d, d))
    out.update(_dense(("text_projection",), d, config.projection_dim, bias=False))
    return out


def _clip_shapes(config: KoCLIPConfig) -> dict[Path_, tuple[int, ...]]:
    v = config.vision
    d, p = v.hidden_size, v.patch_size
    root = ("vision_model", "vision_model")
    out = {
        (*root, "embeddings", "class_embedding"): (d,),
        (*root, "embeddings", "patch_embedding", "kernel"): (p, p, v.num_channels, d),
        (*root, "embeddings", "position_embedding", "embedding"): (v.num_patches + 1, d),
        **_norm((*root, "pre_layrnorm"), d),
        **_norm((*root, "post_layernorm"), d),
    }
    for i in range(v.num_layers):
        layer = (*root, "encoder", "layers", str(i))
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out.update(_dense((*layer, "self_attn", name), d, d))
        out.update(_norm((*layer, "layer_norm1"), d))
        out.update(_norm((*layer, "layer_norm2"), d))
        out.update(_dense((*layer, "mlp", "fc1"), d, v.intermediate_size))
        out.update(_dense((*layer, "mlp", "fc2"), v.intermediate_size, d))
    out.update(_dense(("visual_projection",), d, config.projection_dim, bias=False))
    return out


def _vit_shapes(config: KoCLIPConfig) -> dict[Path_, tuple[int, ...]]:
    v = config.vision
    d, p = v.hidden_size, v.patch_size
    root = ("vision_model",)
    out = {
        (*root, "embeddings", "cls_token"): (1, 1, d),
        (*root, "embeddings", "position_embeddings"): (1, v.num_patches + 1, d),
        (*root, "embeddings", "patch_embeddings", "projection", "kernel"): (
            p,
            p,
            v.num_channels,
            d,
        ),
        (*root, "embeddings", "patch_embeddings", "projection", "bias"): (d,),
        **_norm((*root, "layernorm"), d),
        **_dense((*root, "pooler", "dense"), d, d),
    }
    for i in range(v.num_layers):
        layer = (*root, "encoder", "layer", str(i))
        for name in ("query", "key", "value"):
            out.update(_dense((*layer, "attention", "attention", name), d, d))
        out.update(_dense((*layer, "attention", "output", "dense"), d, d))
        out.update(_norm((*layer, "layernorm_before"), d))
        out.update(_norm((*layer, "layernorm_after"), d))
        out.update(_dense((*layer, "intermediate", "dense"), d, v.intermediate_size))
        out.update(_dense((*layer, "output", "dense"), v.intermediate_size, d))
    out.update(_dense(("visual_projection",), d, config.projection_dim, bias=False))
    return out


def traced_shapes(config: KoCLIPConfig) -> dict[Path_, tuple[int, ...]]:
    """Shapes by tracing the Flax module (slow; the reference `expected_shapes` is tested against)."""
    import jax
    import jax.numpy as jnp

    from koclip.model import KoCLIPModule

    module = KoCLIPModule(config)
    ids = jnp.zeros((1, 2), jnp.int32)
    pixels = jnp.zeros((1, config.vision.image_size, config.vision.image_size, 3), jnp.float32)
    tree = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, pixels, ids, ids, ids))
    return {k: tuple(v.shape) for k, v in flatten(tree["params"]).items()}


def classic_pt_key(path: Path_) -> str:
    """Our parameter path -> the classic PyTorch state-dict key."""
    leaf = path[-1]
    if leaf in ("kernel", "scale", "embedding"):
        leaf = "weight"
    return ".".join((*path[:-1], leaf))


def normalise_pt_key(key: str, vision_kind: str) -> str:
    """Any supported PyTorch key layout -> the classic one."""
    if vision_kind == "clip":
        pattern, repl = _CLIP_V5_RULE
        return pattern.sub(repl, key)
    for pattern, repl in _VIT_V5_RULES:
        new = pattern.sub(repl, key)
        if new != key:
            return new
    return key


def pt_to_flax_array(path: Path_, value: np.ndarray) -> np.ndarray:
    """Transpose a PyTorch tensor into the layout of our parameter at `path`."""
    if path[-1] == "kernel":
        if value.ndim == 2:  # Linear (out, in) -> Dense (in, out)
            return value.T
        if value.ndim == 4:  # Conv (out, in, kh, kw) -> (kh, kw, in, out)
            return value.transpose(2, 3, 1, 0)
    return value


def flax_to_pt_array(path: Path_, value: np.ndarray) -> np.ndarray:
    """The inverse of `pt_to_flax_array` (used to export and in tests)."""
    if path[-1] == "kernel":
        if value.ndim == 2:
            return value.T
        if value.ndim == 4:
            return value.transpose(3, 2, 0, 1)
    return value


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


def params_from_flax(
    tree: Mapping[str, Any],
    config: KoCLIPConfig,
    towers: Iterable[str],
    source: str,
) -> dict[str, Any]:
    """Check a hybrid-clip parameter tree against the model; keep only the towers asked for."""
    towers = tuple(towers)
    expected = expected_shapes(config, towers)
    all_expected = expected_shapes(config, ("text", "vision"))
    flat = flatten(dict(tree))
    report = KeyReport(source)
    out: dict[Path_, np.ndarray] = {}
    for path, value in flat.items():
        if path not in all_expected:
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
    config: KoCLIPConfig,
    towers: Iterable[str],
    source: str,
) -> dict[str, Any]:
    """Map a PyTorch-layout state dict (lazy mapping of key -> array-like) onto our tree.

    Only the tensors of the towers asked for are materialised, so a memory-mapped safetensors
    file costs the memory of one tower.
    """
    towers = tuple(towers)
    kind = config.vision.kind
    expected = expected_shapes(config, towers)
    all_expected = expected_shapes(config, ("text", "vision"))
    wanted = {classic_pt_key(p): p for p in expected}
    known = {classic_pt_key(p) for p in all_expected}
    report = KeyReport(source)
    out: dict[Path_, np.ndarray] = {}
    for key in tensors.keys():
        if _IGNORED_PT_KEYS.match(key):
            continue
        classic = normalise_pt_key(key, kind)
        if classic not in known:
            report.unexpected.append(key)
            continue
        path = wanted.get(classic)
        if path is None:
            continue  # the other tower: never read
        arr = _fit_scalar(pt_to_flax_array(path, np.asarray(tensors[key])), expected[path])
        if tuple(arr.shape) != expected[path]:
            report.misshaped.append(
                f"{key}: checkpoint {tuple(arr.shape)}, model {expected[path]} (after transposing)"
            )
        out[path] = arr
    found = set(out)
    report.missing.extend(classic_pt_key(p) for p in expected if p not in found)
    report.raise_if_any()
    return unflatten({k: _float32(v) for k, v in out.items()})


def params_to_pt(params: Mapping[str, Any], layout: str = "flat") -> dict[str, np.ndarray]:
    """Our tree -> a PyTorch-layout state dict (`layout` 'classic' or 'flat', transformers 5)."""
    flat = flatten(dict(params))
    vit = any(p[:3] == ("vision_model", "embeddings", "cls_token") for p in flat)
    out = {}
    for path, value in flat.items():
        key = classic_pt_key(path)
        if layout == "flat":
            key = _classic_to_flat(key, vit)
        out[key] = np.ascontiguousarray(flax_to_pt_array(path, np.asarray(value)))
    return out


def _classic_to_flat(key: str, vit: bool) -> str:
    if not vit:
        return key.replace("vision_model.vision_model.", "vision_model.", 1)
    m = re.match(r"^vision_model\.encoder\.layer\.(\d+)\.(.*)$", key)
    if not m:
        return key
    n, rest = m.groups()
    renames = {
        "attention.attention.query.": "attention.q_proj.",
        "attention.attention.key.": "attention.k_proj.",
        "attention.attention.value.": "attention.v_proj.",
        "attention.output.dense.": "attention.o_proj.",
        "intermediate.dense.": "mlp.fc1.",
        "output.dense.": "mlp.fc2.",
    }
    for old, new in renames.items():
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    return f"vision_model.layers.{n}.{rest}"


def _fit_scalar(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    # logit_scale: safetensors and some exporters store scalars with shape (1,).
    return arr.reshape(()) if shape == () and arr.shape == (1,) else arr


def _float32(x: np.ndarray) -> np.ndarray:
    # Checkpoints may be fp16/bf16; we compute in fp32 (bf16 is slower on CPU, measured).
    return np.asarray(x, dtype=np.float32)
