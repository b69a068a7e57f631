"""The towers' precision (issue 16): the bf16 path, choosing a precision, the cache, the library.

The bf16 tests run on any CPU: `bf16_here` says the CPU has bf16, so the whole path is
exercised; where it really lacks bf16, OpenVINO computes the same graph in float32.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from koclip import load_encoder
from koclip.errors import KoclipSearchError
from koclip.fast import bf16, paths, precision
from koclip.fast.precision import MIN_COSINE, PrecisionError, resolve_precision
from koclip.synthetic import photo_like
from tests.precision_fixtures import (
    check_agreement,
    check_rankings,
    fast_path_fixtures,
    min_cosine,
    one_photo_manifest,
    top10_overlap,
)

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino onnx)")
pytest.importorskip("onnx", reason="onnx is not installed (pip install openvino onnx)")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bf16_here(monkeypatch):
    monkeypatch.setattr(bf16, "bf16_cpu", lambda: True)


realistic, realistic_clip, encoders = fast_path_fixtures(
    "bf16", seed=3, runs_here=lambda m: m.setattr(bf16, "bf16_cpu", lambda: True)
)


def test_bf16_embeddings_agree_with_fp32(encoders):
    check_agreement(*encoders, "bf16")


def test_bf16_library_keeps_fp32_rankings(encoders):
    library_fp32, library_bf16 = check_rankings(*encoders)
    # image queries too
    assert top10_overlap(library_fp32, library_bf16, library_fp32[:40]) >= 0.95


def test_a_photo_vector_does_not_depend_on_its_batch(encoders):
    """Nothing is scaled per batch in bf16: a photo alone or among others gets its vector."""
    _, fast = encoders
    images = photo_like(9, size=256, seed=13)
    together = fast.encode_images(images)
    alone = np.concatenate([fast.encode_images([im]) for im in images[:3]])
    assert min_cosine(together[:3], alone) >= 0.99999


def test_compiled_towers_leave_cores_unpinned(realistic, tmp_path):
    """Pinned, two encoder processes on one machine share the same cores (a third the speed)."""
    from koclip.checkpoints.hub import resolve
    from koclip.checkpoints.weights import load_params

    files = resolve(realistic)
    stem = tmp_path / "vision"
    bf16.build(files.config, load_params(files, ("vision",)), "vision", stem)
    compiled = bf16.compile_tower(stem.with_name("vision.xml"), threads=1)
    assert compiled.get_property("ENABLE_CPU_PINNING") is False
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_precision_choice(monkeypatch):
    monkeypatch.delenv("KOCLIP_PRECISION")
    assert precision.DEFAULT_PRECISION == "auto"
    monkeypatch.setattr(bf16, "bf16_cpu", lambda: True)
    assert resolve_precision(None) == "bf16"  # the default, where the CPU has bf16
    assert resolve_precision("auto") == "bf16"
    assert resolve_precision("fp32") == "fp32"
    monkeypatch.setattr(bf16, "bf16_cpu", lambda: False)
    assert resolve_precision(None) == "fp32"  # int8 is never chosen by itself
    with pytest.raises(PrecisionError, match="no bfloat16 arithmetic") as info:
        resolve_precision("bf16")
    assert isinstance(info.value, KoclipSearchError) and info.value.exit_code == 2
    monkeypatch.setattr(bf16, "runtime_available", lambda: False)
    monkeypatch.setattr(bf16, "bf16_cpu", lambda: True)
    assert resolve_precision("auto") == "fp32"
    with pytest.raises(PrecisionError, match="pip install openvino onnx"):
        resolve_precision("bf16")
    monkeypatch.setenv("KOCLIP_PRECISION", "fp32")
    assert resolve_precision(None) == "fp32"
    with pytest.raises(PrecisionError, match="the precision asked for is 'int4'"):
        resolve_precision("int4")


def test_this_machine_gets_what_openvino_reports():
    """The real rule, unpatched: bf16 exactly where OpenVINO says the CPU computes it."""
    import openvino as ov

    has = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert bf16.bf16_cpu() is has
    assert resolve_precision("auto") == ("bf16" if has else "fp32")


def test_cache_is_built_once_checked_and_rebuilt_when_damaged(realistic, tmp_path):
    from koclip.checkpoints.hub import resolve

    files = resolve(realistic)
    run, cosine = precision.checked_tower(files, "vision", bf16.PATH, tmp_path)
    assert run is not None and cosine >= MIN_COSINE
    stem = precision.cache_stem(files.fingerprint, "vision", bf16.PATH, tmp_path)
    xml, weights = (stem.with_name(stem.name + s) for s in (".xml", ".bin"))
    verdict = json.loads(stem.with_name(stem.name + ".json").read_text())
    assert verdict["min_cosine"] == cosine and verdict["format"] == bf16.BF16_FORMAT
    assert weights.stat().st_size > 1000
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no scratch left

    def no_build(*_a, **_k):
        raise AssertionError("rebuilt although cached")

    cached = paths.FastPath(**{**bf16.PATH.__dict__, "build": no_build})
    assert precision.checked_tower(files, "vision", cached, tmp_path)[0] is not None
    xml.write_text("<net>not a graph", encoding="utf-8")
    run, _ = precision.checked_tower(files, "vision", bf16.PATH, tmp_path)
    assert run is not None and "<net" in xml.read_text() and "not a graph" not in xml.read_text()

    # 20 KB zeroed inside the weights (a disk error, a partial copy): found by the digest in
    # the verdict, rebuilt, never used silently.
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 20_000] = bytes(20_000)
    weights.write_bytes(bytes(data))
    built = []

    def counting_build(*a, **k):
        built.append(1)
        return bf16.build(*a, **k)

    counted = paths.FastPath(**{**bf16.PATH.__dict__, "build": counting_build})
    run, cosine = precision.checked_tower(files, "vision", counted, tmp_path)
    assert built == [1] and run is not None and cosine >= MIN_COSINE
    assert weights.read_bytes()[middle : middle + 20_000] != bytes(20_000)

    # A verdict that is no number (NaN) or names no digests is no verdict: rebuilt.
    sound = json.loads(stem.with_name(stem.name + ".json").read_text())
    for bad in (
        {**sound, "min_cosine": float("nan")},
        {k: v for k, v in sound.items() if k != "sha256"},
    ):
        stem.with_name(stem.name + ".json").write_text(json.dumps(bad))
        built.clear()
        assert precision.checked_tower(files, "vision", counted, tmp_path)[0] is not None
        assert built == [1]


def test_a_tower_under_the_bound_is_never_used(realistic, bf16_here):
    from koclip.checkpoints.hub import resolve

    files = resolve(realistic)
    precision.checked_tower(files, "vision", bf16.PATH)  # into the (test-private) cache
    stem = precision.cache_stem(files.fingerprint, "vision", bf16.PATH, None)
    verdict = stem.with_name(stem.name + ".json")
    good = verdict.read_text()
    try:
        verdict.write_text(json.dumps({**json.loads(good), "min_cosine": 0.9}))
        assert load_encoder(realistic, ("vision",), precision="auto").precision == "fp32"
        with pytest.raises(PrecisionError, match="cosine 0.9000"):
            load_encoder(realistic, ("vision",), precision="bf16")
    finally:
        verdict.write_text(good)


def test_auto_stays_fp32_without_the_cache(realistic, bf16_here, monkeypatch):
    monkeypatch.setenv("KOCLIP_NO_CONVERTED_CACHE", "1")
    assert load_encoder(realistic, ("vision",), precision="auto").precision == "fp32"
    # asked for: built each time
    assert load_encoder(realistic, ("vision",), precision="bf16").precision == "bf16"


def test_index_records_precision_and_info_shows_it(realistic_clip, tmp_path, bf16_here):
    import db
    from cli import main
    from tests.indexer_fixtures import index, open_lib, rows, write_jpeg

    root = tmp_path / "photos"
    for i in range(5):
        write_jpeg(root / f"a{i}.jpg", i)
    index(root, realistic_clip, precision="auto")
    with open_lib(root) as lib:
        assert lib.manifest().precision == "bf16"
        first = {p: r.vector() for p, r in rows(lib).items()}
    write_jpeg(root / "b.jpg", 99)
    index(root, realistic_clip, precision="fp32")  # interchangeable: both kinds in one library
    with open_lib(root) as lib:
        assert lib.manifest().precision == "bf16+fp32"
    out = CliRunner().invoke(main, ["info", "--library", str(root / db.LIBRARY_DIRNAME)])
    assert out.exit_code == 0, out.output
    assert "(bf16+fp32)" in out.output
    index(root, realistic_clip, precision="fp32", rebuild=True)
    with open_lib(root) as lib:
        assert lib.manifest().precision == "fp32"
        again = {p: r.vector() for p, r in rows(lib).items()}
    assert min(float(first[p] @ again[p]) for p in first) >= MIN_COSINE


def test_a_run_that_stores_no_vector_relabels_nothing(realistic_clip, tmp_path, bf16_here):
    """An fp32 library opened by a bf16 writer (`serve --watch` under auto) with nothing to
    encode stays fp32; the first bf16 vector it stores names bf16 too."""
    from indexer import IndexOptions, IndexSession
    from tests.indexer_fixtures import index, open_lib, write_jpeg

    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", 1)
    index(root, realistic_clip, precision="fp32")
    with IndexSession(root, IndexOptions(model=str(realistic_clip), precision="auto")) as s:
        assert s.encoder.precision == "bf16"
        s.run()  # nothing new
        with open_lib(root) as lib:
            assert lib.manifest().precision == "fp32"
        assert '"precision": "fp32"' in (root / ".koclip-search/manifest.json").read_text()
        write_jpeg(root / "b.jpg", 2)
        assert s.run().new == 1
    with open_lib(root) as lib:
        assert lib.manifest().precision == "bf16+fp32"
    assert '"precision": "bf16+fp32"' in (root / ".koclip-search/manifest.json").read_text()


def test_cli_precision_flag(realistic_clip, tmp_path, bf16_here):
    from cli import main
    from tests.indexer_fixtures import open_lib, write_jpeg

    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", 1)
    args = ["index", str(root), "--model", str(realistic_clip), "--json"]
    out = CliRunner().invoke(main, [*args, "--precision", "int4"])
    assert out.exit_code == 2
    out = CliRunner().invoke(main, [*args, "--precision", "bf16"])
    assert out.exit_code == 0, out.output
    with open_lib(root) as lib:
        assert lib.manifest().precision == "bf16"


def test_bf16_asked_for_where_the_cpu_lacks_it_is_one_line(realistic_clip, tmp_path, monkeypatch):
    from cli import main
    from tests.indexer_fixtures import write_jpeg

    monkeypatch.setattr(bf16, "bf16_cpu", lambda: False)
    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", 1)
    args = ["index", str(root), "--model", str(realistic_clip), "--precision", "bf16"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 2
    assert out.output.strip().count("\n") == 0 and "no bfloat16 arithmetic" in out.output
    assert not (root / ".koclip-search").exists()


def test_library_from_before_the_precision_column(tiny_checkpoint, tmp_path):
    import db
    from tests.indexer_fixtures import index, open_lib, write_jpeg

    root = tmp_path / "photos"
    write_jpeg(root / "a.jpg", 1)
    index(root, tiny_checkpoint)
    path = root / db.LIBRARY_DIRNAME / "library.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE manifest DROP COLUMN precision")
    with open_lib(root) as lib:  # a reader cannot add it: the default stands in
        assert lib.manifest().precision == "fp32"
    index(root, tiny_checkpoint)  # a writer adds it
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT precision FROM manifest").fetchone() == ("fp32",)


def test_queries_take_bf16_in_long_lived_processes(realistic_clip, tmp_path, monkeypatch):
    from search import QueryEncoder

    monkeypatch.setattr(bf16, "bf16_cpu", lambda: True)
    manifest = one_photo_manifest(tmp_path / "photos", realistic_clip, "fp32")

    def text_precision(setting: str, backend: str) -> str:
        monkeypatch.setenv("KOCLIP_PRECISION", setting)
        return QueryEncoder(manifest, persistent=False, backend=backend).encoder("text").precision

    assert text_precision("auto", "jax") == "bf16"  # serve, the Python API
    assert text_precision("auto", "numpy") == "fp32"  # the one-shot CLI: no graph to compile
    assert text_precision("bf16", "numpy") == "bf16"  # asked for outright: every backend
    assert text_precision("fp32", "jax") == "fp32"
    monkeypatch.setenv("KOCLIP_NO_CONVERTED_CACHE", "1")  # auto would rebuild it each process
    assert text_precision("auto", "jax") == "fp32"
    monkeypatch.delenv("KOCLIP_NO_CONVERTED_CACHE")
    monkeypatch.setattr(bf16, "bf16_cpu", lambda: False)
    assert text_precision("auto", "jax") == "fp32"
    monkeypatch.setenv("KOCLIP_PRECISION", "bf16")
    with pytest.raises(PrecisionError):
        QueryEncoder(manifest, persistent=False, backend="jax").encoder("text")
    monkeypatch.setattr(bf16, "bf16_cpu", lambda: True)
    vec = QueryEncoder(manifest, persistent=False, backend="jax").texts(["바다"])
    monkeypatch.setenv("KOCLIP_PRECISION", "fp32")
    ref = QueryEncoder(manifest, persistent=False, backend="numpy").texts(["바다"])
    assert float(vec[0] @ ref[0]) >= MIN_COSINE


def test_openvino_reports_nothing_to_the_network(realistic, tmp_path):
    """OpenVINO's usage reporting forks a sender on each model read; ours never starts it."""
    script = f"""
import os, socket, sys
sys.path.insert(0, {str(REPO)!r})
def refuse(*a, **k):
    raise SystemExit("tried to " + str(a)[:80])
os.fork = refuse
socket.socket.connect = refuse
from koclip import load_encoder
from koclip.fast import bf16
bf16.bf16_cpu = lambda: True
enc = load_encoder({str(realistic)!r}, ("vision", "text"), precision="bf16")
enc.encode_texts(["바다"])
assert sys.modules.get("openvino_telemetry") is None
print("quiet")
"""
    env = {**os.environ, "KOCLIP_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "quiet" in out.stdout
