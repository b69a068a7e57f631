"""The bf16 towers: OpenVINO over graphs of our own parameters, products in bfloat16.

A tower's ONNX graph (`koclip.fast.onnx_export`) is converted once per checkpoint into OpenVINO's
own format and compiled with bfloat16 inference: matrix products take bf16 inputs and sum in
float32 (AMX tiles or AVX512-BF16 dot products), while LayerNorm, softmax and the like stay
float32.
Nothing is scaled per batch, so a photo's vector does not depend on the photos beside it.

bf16 rounds each product's inputs to 8 significant bits: ~0.2% relative error per value, about
a fifth of int8's per-tensor activation steps. At koclip-base size that keeps the search
rankings of an fp32 library (README, `bench/precision.py`), which int8 does not.

`auto` takes bf16 where OpenVINO reports bf16 arithmetic on this CPU (AMX or AVX512-BF16);
elsewhere OpenVINO would silently compute in float32, so bf16 is refused there when asked for.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from koclip.config import KoCLIPConfig
from koclip.fast.paths import FastPath, Runner, cpu_threads

BF16_FORMAT = 1  # bump when the graph or the conversion changes


def runtime_available() -> bool:
    """True when openvino and onnx can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "onnx"))


def openvino() -> Any:
    """The openvino module, with its usage reporting off in this process.

    OpenVINO's Python package sends usage events to Google Analytics from a forked process on
    every `read_model` unless the user opted out (`openvino_telemetry`). Nothing we run may
    reach the network, so that module is made unimportable here before OpenVINO asks for it;
    OpenVINO then carries on without it.
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino as ov

    return ov


@functools.cache
def _core() -> Any:
    return openvino().Core()


@functools.cache
def bf16_cpu() -> bool:
    """Whether OpenVINO computes bf16 on this CPU (it reports BF16 with AMX or AVX512-BF16)."""
    try:
        return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # an OpenVINO that cannot see the CPU: no bf16
        return False


def unavailable() -> str | None:
    """Why bf16 cannot run here, or None."""
    if not runtime_available():
        return "bf16 precision needs openvino and onnx: `pip install openvino onnx`"
    if not bf16_cpu():
        return (
            "this CPU has no bfloat16 arithmetic (AMX or AVX512-BF16) for OpenVINO; "
            "use `--precision fp32`"
        )
    return None


# How each tower's weights are stored. Rounding the vision weights to float16 before bfloat16
# moved search results measurably (top-10 overlap of random-text queries over a koclip-base-sized
# library 0.968 -> 0.959), and library vectors stay; a query is made again each time and its
# float16 text weights moved none (overlap 1.000), at half the disk (0.67 instead of 1.35 GB).
FLOAT16_WEIGHTS = {"vision": False, "text": True}


def build(config: KoCLIPConfig, params: Any, tower: str, stem: Path) -> None:
    """Write one tower as OpenVINO IR: `stem`.xml (the graph) and `stem`.bin (its weights,
    float32 or float16 per `FLOAT16_WEIGHTS`)."""
    import onnx

    from koclip.fast.onnx_export import tower_graph

    with tempfile.TemporaryDirectory(prefix=".onnx-", dir=stem.parent) as tmp:
        source = Path(tmp) / "tower.onnx"
        onnx.save_model(tower_graph(config, params, tower), str(source))
        model = _core().read_model(str(source))  # OpenVINO's ONNX reader, no conversion tool
    xml = stem.with_name(stem.name + ".xml")
    openvino().save_model(model, str(xml), compress_to_fp16=FLOAT16_WEIGHTS[tower])


def compile_tower(xml: Path, threads: int | None = None) -> Any:
    """The compiled tower: bf16 products, one latency-minded stream over `threads` threads,
    not pinned to cores."""
    config = {
        "INFERENCE_PRECISION_HINT": "bf16",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads or cpu_threads(),
        "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,  # no int8 activations behind our back
        # OpenVINO pins its threads to cores by default, the same cores in every process: two
        # encoder processes on one machine (two Ray workers on one node) would then share cores
        # while others idle. One process alone runs as fast either way.
        "ENABLE_CPU_PINNING": False,
    }
    core = _core()
    return core.compile_model(core.read_model(str(xml)), "CPU", config)


def open_tower(stem: Path) -> Runner:
    """A runner over the compiled tower; one call at a time, outputs copied out of its buffers."""
    compiled = compile_tower(stem.with_name(stem.name + ".xml"))
    request = compiled.create_infer_request()
    lock = threading.Lock()

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with lock:
            request.infer(feeds)
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    return run


PATH = FastPath(
    name="bf16",
    version=BF16_FORMAT,
    suffixes=(".bin", ".xml"),  # the graph after its weights: a reader never finds one alone
    build=build,
    open=open_tower,
    available=unavailable,
    chosen_by_auto=True,
)
