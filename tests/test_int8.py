"""The int8 towers (issue 16): graph exactness, agreement with fp32, rankings, cache; opt-in only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from koclip.errors import KoclipSearchError
from koclip.fast import paths, precision, quantized
from koclip.fast.precision import MIN_COSINE, PrecisionError, resolve_precision
from koclip.fast.quantized import int8_dot_cpu
from tests.precision_fixtures import (
    check_agreement,
    check_rankings,
    fast_path_fixtures,
    one_photo_manifest,
)

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'koclip-search[int8]')")
ort = pytest.importorskip(
    "onnxruntime", reason="onnxruntime is not installed (pip install 'koclip-search[int8]')"
)


# int8 runs wherever ONNX Runtime does: nothing to pretend of this machine.
realistic, realistic_clip, encoders = fast_path_fixtures("int8", seed=2, runs_here=lambda m: None)


def test_graph_in_fp32_is_the_numpy_tower(realistic):
    from koclip.checkpoints.hub import resolve
    from koclip.checkpoints.weights import load_params
    from koclip.fast import numpy_encoder
    from koclip.fast.onnx_export import tower_graph

    files = resolve(realistic)
    params = load_params(files, ("text", "vision"))
    pixels = precision.check_pixels(files.config, n=3, seed=5)
    sess = quantized.session(tower_graph(files.config, params, "vision").SerializeToString())
    want = numpy_encoder.image_features(files.config, params, pixels)
    np.testing.assert_allclose(sess.run(None, {"pixels": pixels})[0], want, atol=1e-4)
    ids, mask = precision.check_texts(files.config.text, n=4, seed=5)
    sess = quantized.session(tower_graph(files.config, params, "text").SerializeToString())
    want = numpy_encoder.text_features(files.config, params, ids, mask)
    got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_int8_embeddings_agree_with_fp32(encoders):
    check_agreement(*encoders, "int8")


def test_int8_library_keeps_fp32_rankings(encoders):
    check_rankings(*encoders)


def test_precision_rule_from_cpu_flags():
    assert int8_dot_cpu({"avx2", "avx512_vnni"}, "x86_64")
    assert int8_dot_cpu({"avx_vnni"}, "x86_64")
    assert not int8_dot_cpu({"avx2", "avx512f"}, "x86_64")
    assert int8_dot_cpu({"asimd", "asimddp"}, "aarch64")
    assert not int8_dot_cpu({"asimd"}, "aarch64")
    assert not int8_dot_cpu(set(), "riscv64")


def test_int8_is_used_only_when_asked(monkeypatch):
    monkeypatch.setattr(quantized, "int8_dot_cpu", lambda: True)
    from koclip.fast import bf16

    monkeypatch.setattr(bf16, "bf16_cpu", lambda: False)
    assert resolve_precision("auto") == "fp32"  # even with VNNI: it misses the ranking bound
    assert resolve_precision("int8") == "int8"
    monkeypatch.setattr(quantized, "int8_dot_cpu", lambda: False)
    assert resolve_precision("int8") == "int8"  # asked for: used even without VNNI
    monkeypatch.setattr(quantized, "runtime_available", lambda: False)
    with pytest.raises(PrecisionError, match=r"koclip-search\[int8\]") as info:
        resolve_precision("int8")
    assert isinstance(info.value, KoclipSearchError) and info.value.exit_code == 2


def test_cache_is_built_once_checked_and_rebuilt_when_damaged(realistic, tmp_path):
    from koclip.checkpoints.hub import resolve

    files = resolve(realistic)
    run, cosine = precision.checked_tower(files, "vision", quantized.PATH, tmp_path)
    assert run is not None and cosine >= MIN_COSINE
    stem = precision.cache_stem(files.fingerprint, "vision", quantized.PATH, tmp_path)
    model_path = stem.with_name(stem.name + ".onnx")
    assert json.loads(stem.with_name(stem.name + ".json").read_text())["min_cosine"] == cosine

    def no_build(*_a, **_k):
        raise AssertionError("rebuilt although cached")

    cached = paths.FastPath(**{**quantized.PATH.__dict__, "build": no_build})
    assert precision.checked_tower(files, "vision", cached, tmp_path)[0] is not None
    model_path.write_bytes(b"not an onnx model")
    run, _ = precision.checked_tower(files, "vision", quantized.PATH, tmp_path)
    assert run is not None and model_path.stat().st_size > 1000


def test_index_with_int8_records_it(realistic_clip, tmp_path):
    from cli import main
    from tests.indexer_fixtures import index, open_lib, rows, write_jpeg

    root = tmp_path / "photos"
    for i in range(4):
        write_jpeg(root / f"a{i}.jpg", i)
    out = CliRunner().invoke(
        main, ["index", str(root), "--model", str(realistic_clip), "--precision", "int8"]
    )
    assert out.exit_code == 0, out.output
    with open_lib(root) as lib:
        assert lib.manifest().precision == "int8"
        first = {p: r.vector() for p, r in rows(lib).items()}
    index(root, realistic_clip, precision="fp32", rebuild=True)
    with open_lib(root) as lib:
        again = {p: r.vector() for p, r in rows(lib).items()}
    assert min(float(first[p] @ again[p]) for p in first) >= MIN_COSINE


def test_text_tower_is_weight_only_int8(realistic):
    """Batch-1 queries read int8 weights (a quarter of the bytes) and compute in float32."""
    import onnx

    from koclip.checkpoints.hub import resolve
    from koclip.checkpoints.weights import load_params

    files = resolve(realistic)
    params = load_params(files, ("text",))
    model = onnx.load_from_string(quantized.quantize_tower(files.config, params, "text"))
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulNBits" in ops and not ops & {"DynamicQuantizeLinear", "MatMulInteger"}
    weights = {t.name: t for t in model.graph.initializer}
    products = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert all(weights.get(n.input[1]) is None for n in products)  # no fp32 weight matrix left
    packed = [weights[n.input[1]] for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert all(t.data_type == onnx.TensorProto.UINT8 for t in packed)


def test_weight_only_int8_is_close_to_the_float_product():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    kernel = (rng.standard_normal((80, 24)) / 9).astype(np.float32)  # 80: not a block multiple
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 80])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 24])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "mm",
        [x],
        [y],
        [numpy_helper.from_array(kernel, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = quantized.weight_only_int8(model)
    assert [n.op_type for n in model.graph.node] == ["MatMulNBits"]
    a = rng.standard_normal((5, 80)).astype(np.float32)
    got = quantized.session(model.SerializeToString()).run(None, {"x": a})[0]
    want = a @ kernel
    # each weight off by at most half a step of its block's scale
    step = np.abs(kernel).max() / 127
    assert np.abs(got - want).max() <= 0.5 * step * np.abs(a).sum(axis=1).max() + 1e-5
    assert np.abs(got - want).max() > 0  # it really was rounded


def test_queries_use_the_int8_text_tower_only_when_asked(realistic_clip, tmp_path, monkeypatch):
    from koclip.fast import bf16
    from search import QueryEncoder

    monkeypatch.setattr(quantized, "int8_dot_cpu", lambda: True)
    monkeypatch.setattr(bf16, "bf16_cpu", lambda: False)
    manifest = one_photo_manifest(tmp_path / "photos", realistic_clip, "int8")
    for setting in ("auto", "fp32"):  # whatever precision made the library
        monkeypatch.setenv("KOCLIP_PRECISION", setting)
        for backend in ("numpy", "jax"):
            q = QueryEncoder(manifest, persistent=False, backend=backend)
            assert q.encoder("text").precision == "fp32", (setting, backend)
    monkeypatch.setenv("KOCLIP_PRECISION", "int8")
    for backend in ("numpy", "jax"):
        q = QueryEncoder(manifest, persistent=False, backend=backend)
        assert q.encoder("text").precision == "int8"
    vec = QueryEncoder(manifest, persistent=False, backend="numpy").texts(["바다"])
    monkeypatch.setenv("KOCLIP_PRECISION", "fp32")
    ref = QueryEncoder(manifest, persistent=False, backend="numpy").texts(["바다"])
    assert float(vec[0] @ ref[0]) >= MIN_COSINE
