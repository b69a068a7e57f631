"""The int8 towers: ONNX Runtime over quantised graphs of our own parameters.

The vision tower is quantised dynamically (`onnxruntime.quantization`: weights int8 per output
channel, each batch's activations their own uint8 scale, so no calibration set can be wrong for
a photo collection), the text tower weight-only (`weight_only_int8`: a batch-1 query is bound by
reading weights, so it reads int8 and computes in float32). `koclip.fast.precision` checks each
tower against fp32 and caches it; `koclip.load_encoder` loads it (`--precision int8`).

int8 is only used when asked for: at koclip-base size the vision tower's rounding moves more
search results than the issue's bound allows (README, `bench/precision.py`), where bf16 does not.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from koclip.config import KoCLIPConfig
from koclip.fast.paths import FastPath, cpu_threads

QUANT_FORMAT = 2  # bump when the graph or the quantisation recipe changes


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


def unavailable() -> str | None:
    """Why int8 cannot run here, or None. Without a dot-product instruction it still runs
    (slowly: three instructions for VNNI's one, 7-bit weights to avoid saturating)."""
    if not runtime_available():
        return "int8 precision needs onnxruntime and onnx: `pip install 'koclip-search[int8]'`"
    return None


# --- building, checking and caching the quantised graphs ------------------------------------


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

    from koclip.fast.onnx_export import MS_DOMAIN

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

    from koclip.fast.onnx_export import is_activation_matmul, tower_graph

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
    options.intra_op_num_threads = threads or cpu_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _build(config: KoCLIPConfig, params: Any, tower: str, stem: Path) -> None:
    stem.with_name(stem.name + ".onnx").write_bytes(quantize_tower(config, params, tower))


def _open(stem: Path) -> Any:
    sess = session(stem.with_name(stem.name + ".onnx"))
    return lambda feeds: sess.run(None, feeds)[0]


# Never chosen by `auto`: the vision tower misses the ranking bound at koclip-base size.
PATH = FastPath(
    name="int8",
    version=QUANT_FORMAT,
    suffixes=(".onnx",),
    build=_build,
    open=_open,
    available=unavailable,
    chosen_by_auto=False,
)
