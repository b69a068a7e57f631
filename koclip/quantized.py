"""The int8 towers: ONNX Runtime over quantised graphs of our own parameters.

fp32 (the jitted towers of `koclip.api`) stays the reference and the fallback. On first use per
checkpoint a tower's graph is built from the converted weights (`koclip.onnx_export`) and
quantised: the vision tower dynamically (`onnxruntime.quantization`: weights int8 per output
channel, each batch's activations their own uint8 scale, so no calibration set can be wrong for
a photo collection), the text tower weight-only (`weight_only_int8`: a batch-1 query is bound by
reading weights, so it reads int8 and computes in float32). The result is checked against the
fp32 numpy tower on a varied generated set.
Both the model and that verdict are cached beside the converted weights, keyed by the
checkpoint's fingerprint; a tower whose int8 embeddings fall under `MIN_COSINE` of fp32 is never
used in int8, so vectors of either precision stay interchangeable in one library.

`--precision auto` picks int8 only where it pays: when onnxruntime is installed and the CPU has
an int8 dot-product instruction (x86 VNNI or AMX, ARM's dot product). Without one, int8 GEMM
needs three instructions for what VNNI does in one and 7-bit weights to avoid saturating, so
fp32 is kept there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import platform
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from koclip.cache import _converted_dir, _write_atomic
from koclip.config import KoCLIPConfig, TextConfig
from koclip.encoder import Encoder
from koclip.errors import KoCLIPError
from koclip.hub import CheckpointFiles, resolve
from koclip.registry import model_id_for

PRECISIONS = ("auto", "fp32", "int8")
QUANT_FORMAT = 2  # bump when the graph or the quantisation recipe changes
MIN_COSINE = 0.998  # int8 vs fp32 embedding agreement a tower must reach to be used
CHECK_IMAGES = 12
CHECK_TEXTS = 12


class PrecisionError(KoCLIPError):
    """The precision asked for cannot be used here (runtime missing, or int8 misses fp32)."""

    exit_code = 2
    http_status = 400
    code = "precision_unavailable"


# --- choosing a precision -------------------------------------------------------------------


def runtime_available() -> bool:
    """True when onnxruntime and onnx can be imported (the `int8` extra)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def int8_dot_cpu(flags: set[str] | None = None, machine: str | None = None) -> bool:
    """Whether this CPU has an int8 dot-product instruction: VNNI/AMX on x86, dotprod on ARM."""
    machine = (machine or platform.machine()).lower()
    flags = _cpu_flags() if flags is None else flags
    if machine in ("x86_64", "amd64"):
        return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    if machine in ("aarch64", "arm64"):
        return sys.platform == "darwin" or "asimddp" in flags  # every Apple M chip has it
    return False


# fp32 until the int8 towers meet the bounds at koclip-base size too: top-10 overlap of
# random-text queries over an int8 library measured 0.91-0.93 < 0.95 (the text tower, weight-only,
# now passes: 0.9988). int8 and auto are opt-in meanwhile (the README's `bench/int8.py` table).
DEFAULT_PRECISION = "fp32"


def requested_precision(precision: str | None) -> str:
    """The precision asked for: `precision`, else $KOCLIP_PRECISION, else `DEFAULT_PRECISION`."""
    return precision or os.environ.get("KOCLIP_PRECISION") or DEFAULT_PRECISION


def resolve_precision(precision: str | None) -> str:
    """ "fp32" or "int8" for a requested precision; PrecisionError if int8 is asked for but absent."""
    precision = requested_precision(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return "fp32"
    if not runtime_available():
        if precision == "int8":
            raise PrecisionError(
                "int8 precision needs onnxruntime and onnx: `pip install 'koclip-search[int8]'`"
            )
        return "fp32"
    return "int8" if precision == "int8" or int8_dot_cpu() else "fp32"


# --- building, checking and caching the quantised graphs ------------------------------------


def quantized_paths(fingerprint: str, tower: str, cache_root: Path | None) -> tuple[Path, Path]:
    """The cached int8 model of one tower and the JSON verdict of its check against fp32."""
    stem = _converted_dir(cache_root) / f"{fingerprint}.{tower}.int8-v{QUANT_FORMAT}"
    return stem.with_suffix(".onnx"), stem.with_suffix(".json")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantiser logs advice through the root logger; library code prints nothing."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


WEIGHT_BLOCK = 32  # the text tower's int8 weights: one scale per 32 rows of each column


def weight_only_int8(model: Any, block: int = WEIGHT_BLOCK) -> Any:
    """`model` with each MatMul by a 2-D weight replaced by ONNX Runtime's MatMulNBits (8 bits).

    Weight-only: the weights are stored as int8 with one scale per `block` rows of each output
    column (symmetric, so zero is exact) and widened to float32 inside the product; activations
    stay float32. A batch-1 text query is bound by reading weights, so reading a quarter of the
    bytes is what makes it faster, and no activation is rounded.
    """
    from onnx import helper, numpy_helper

    from koclip.onnx_export import MS_DOMAIN

    weights = {t.name: t for t in model.graph.initializer}
    nodes, replaced, added = [], set(), []
    for node in model.graph.node:
        w = weights.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is None or len(w.dims) != 2:
            nodes.append(node)
            continue
        kernel = numpy_helper.to_array(w).astype(np.float32)
        k, n = kernel.shape
        blocks = -(-k // block)
        padded = np.zeros((blocks * block, n), np.float32)
        padded[:k] = kernel
        tiles = padded.T.reshape(n, blocks, block)  # MatMulNBits' layout: (N, K blocks, block)
        scale = np.abs(tiles).max(axis=2) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(tiles / scale[..., None]), -127, 127) + 128  # zero point 128
        q_name, scale_name = f"{w.name}/int8", f"{w.name}/scale"
        added.append(numpy_helper.from_array(q.astype(np.uint8), q_name))
        added.append(numpy_helper.from_array(scale.reshape(-1).astype(np.float32), scale_name))
        replaced.add(w.name)
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], q_name, scale_name],
                list(node.output),
                name=node.name,
                domain=MS_DOMAIN,
                K=k,
                N=n,
                bits=8,
                block_size=block,
            )
        )
    kept = [t for t in model.graph.initializer if t.name not in replaced]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend([*kept, *added])
    return model


def quantize_tower(config: KoCLIPConfig, params: Any, tower: str) -> bytes:
    """One tower as a serialised ONNX model with int8 weight matrices.

    vision: dynamic int8 (weights per output channel, each batch's activations their own uint8
    scale; products in int8). text: weight-only int8 (`weight_only_int8`), what pays at batch 1.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from koclip.onnx_export import is_activation_matmul, tower_graph

    model = tower_graph(config, params, tower)
    if tower == "text":
        return weight_only_int8(model).SerializeToString()
    excluded = [n.name for n in model.graph.node if is_activation_matmul(n.name)]
    with tempfile.TemporaryDirectory(prefix="koclip-int8-") as tmp, _quiet():
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, str(source))
        del model
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=excluded,
            # all float32; ONNX's type inference stops at the contrib (com.microsoft) nodes
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return target.read_bytes()


def session(model: bytes | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session over a model file or its bytes; warnings are not printed."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def check_texts(
    c: TextConfig, n: int = CHECK_TEXTS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of `n` random token sequences of varied length, [CLS] ... [SEP] then padding."""
    rng = np.random.default_rng(seed)
    longest = min(24, c.max_positions)
    ids = np.full((n, longest), c.pad_token_id, np.int64)
    mask = np.zeros((n, longest), np.int64)
    for row in range(n):
        length = int(rng.integers(3, longest + 1))
        body = rng.integers(5, c.vocab_size, length - 2)
        ids[row, :length] = [0, *body, 2]
        mask[row, :length] = 1
    return ids, mask


def check_pixels(config: KoCLIPConfig, n: int = CHECK_IMAGES, seed: int = 0) -> np.ndarray:
    from koclip.preprocess import preprocess
    from koclip.synthetic import photo_like

    size = config.vision.image_size
    return np.stack([preprocess(im, size) for im in photo_like(n, size + 32, seed)])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def agreement(config: KoCLIPConfig, params: Any, tower: str, sess: Any) -> float:
    """Min cosine between this session's features and the fp32 numpy tower's on the check set."""
    from koclip import numpy_encoder

    if tower == "vision":
        pixels = check_pixels(config)
        reference = numpy_encoder.image_features(config, params, pixels)
        got = sess.run(None, {"pixels": pixels})[0]
    else:
        ids, mask = check_texts(config.text)
        reference = numpy_encoder.text_features(config, params, ids, mask)
        got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return float(_cosines(reference, got).min())


def _read_verdict(path: Path) -> float | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != QUANT_FORMAT:
            return None
        return float(data["min_cosine"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def int8_session(
    files: CheckpointFiles, tower: str, cache_root: Path | None = None
) -> tuple[Any | None, float]:
    """(session, min cosine vs fp32) of one tower in int8; session None when under MIN_COSINE.

    Built and checked on first use per checkpoint, then read from the cache.
    """
    model_path, verdict_path = quantized_paths(files.fingerprint, tower, cache_root)
    use_cache = not os.environ.get("KOCLIP_NO_CONVERTED_CACHE")
    cosine = _read_verdict(verdict_path) if use_cache else None
    if cosine is not None and model_path.is_file():
        if cosine < MIN_COSINE:
            return None, cosine
        with contextlib.suppress(Exception):  # a damaged file is rebuilt below
            return session(model_path), cosine
    from koclip.weights import load_params

    params = load_params(files, (tower,), cache_root)
    blob = quantize_tower(files.config, params, tower)
    sess = session(blob)
    cosine = agreement(files.config, params, tower, sess)
    if use_cache:
        _write_atomic(model_path, lambda tmp: Path(tmp).write_bytes(blob))
        verdict = {"format": QUANT_FORMAT, "tower": tower, "min_cosine": cosine}
        _write_atomic(verdict_path, lambda tmp: Path(tmp).write_text(json.dumps(verdict)))
    return (sess if cosine >= MIN_COSINE else None), cosine


# --- the backend and the loader -------------------------------------------------------------


class OnnxKoCLIP:
    """`koclip.encoder`'s backend over int8 ONNX Runtime sessions, one per loaded tower."""

    bucketed = False  # any batch shape runs without compiling
    precision = "int8"
    params = None  # the weights live in the sessions

    def __init__(self, config: KoCLIPConfig, sessions: dict[str, Any]) -> None:
        self.config = config
        self.sessions = sessions
        self.towers = frozenset(sessions)

    def _run(self, tower: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if tower not in self.sessions:
            raise KoCLIPError(f"the {tower} tower was not loaded; pass towers=(..., {tower!r})")
        return self.sessions[tower].run(None, feeds)[0]

    def get_text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self._run("text", {k: np.asarray(v, np.int64) for k, v in feeds.items()})

    def get_image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._run("vision", {"pixels": np.asarray(pixel_values, np.float32)})


def load_int8_encoder(
    name_or_path: str | os.PathLike[str] = "koclip-base",
    towers: Sequence[str] = ("vision",),
    batch_size: int = 32,
    cache_dir: str | None = None,
    cache_root: Path | None = None,
) -> Encoder:
    """Int8 batch encoders; PrecisionError if a tower's int8 embeddings miss fp32's."""
    files = resolve(name_or_path, cache_dir=cache_dir)
    sessions = {}
    for tower in sorted(set(towers)):
        sess, cosine = int8_session(files, tower, cache_root)
        if sess is None:
            raise PrecisionError(
                f"this checkpoint's int8 {tower} tower agrees with fp32 only to cosine "
                f"{cosine:.4f} (< {MIN_COSINE}); index with `koclip-search index --precision fp32`"
            )
        sessions[tower] = sess
    tokenizer = None
    if "text" in sessions:
        from koclip.tokenizer import load_wordpiece

        tokenizer = load_wordpiece(files.directory, cache_dir)
    model = OnnxKoCLIP(files.config, sessions)
    return Encoder(model, tokenizer, model_id_for(name_or_path), files.fingerprint, batch_size)


def load_encoder_at(
    name_or_path: str | os.PathLike[str] = "koclip-base",
    precision: str | None = None,
    towers: Sequence[str] = ("vision",),
    batch_size: int = 32,
    cache_dir: str | None = None,
) -> Encoder:
    """Batch encoders in the precision asked for (see `requested_precision`).

    `auto` falls back to the jitted fp32 towers where int8 is absent, slow or not exact enough.
    """
    precision = requested_precision(precision)
    # Without the cache every process would quantise again: `auto` is not worth that.
    uncached = bool(os.environ.get("KOCLIP_NO_CONVERTED_CACHE")) and precision == "auto"
    if not uncached and resolve_precision(precision) == "int8":
        try:
            return load_int8_encoder(name_or_path, towers, batch_size, cache_dir)
        except PrecisionError:
            if precision == "int8":
                raise
    from koclip.api import load_encoder

    return load_encoder(name_or_path, towers, batch_size, cache_dir)
