"""The towers' precisions against fp32: speed, agreement and rankings, same run.

    python bench/precision.py                   # koclip-base sizes, realistic random weights
    python bench/precision.py --no-text         # vision only (skips the 1.3 GB text graph)
    python bench/precision.py --model large     # ViT-L/16 (slow on 2 cores)

Weights are random with realistic statistics (`koclip.testing.random_params(realistic=True)`);
the real checkpoints are not downloaded. Rows:

* vision img/s at `--batch`: bf16 (ours, OpenVINO), int8 (ours, ONNX Runtime), our fp32 jitted
  tower, transformers PyTorch fp32 and PyTorch bf16 autocast; ratios against our fp32. Targets
  (issue 16): the fast path >= 1.7x our fp32 and >= PyTorch bf16.
* text ms/query at batch 1: bf16, int8, the numpy tower (one-shot CLI), jitted fp32, PyTorch
  fp32; and a one-shot query in a fresh process (load, compile, answer), numpy vs bf16.
* matmul ceilings: GFLOP/s of one ViT-B MLP product (1600x768 @ 768x3072) in XLA fp32, ORT int8
  and OpenVINO bf16, and each tower's share of its own ceiling.
* agreement, per fast path: min cosine vs fp32 on `--images` photo-like generated images (and
  random token sequences); mean top-10 overlap of its library with the fp32 one over `--queries`
  image queries and random-text queries (bounds: 0.998, 0.95).

Timings are medians of `--repeats`; other processes on the machine slow every row alike, and
the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import load_average, runs  # noqa: E402
from koclip.config import KoCLIPConfig  # noqa: E402
from koclip.testing import random_params  # noqa: E402

MATMUL = (1600, 768, 3072)


def median_s(fn, repeats: int) -> float:
    fn()  # warm: compile, allocate, spin up threads
    return statistics.median(runs(fn, repeats))


def vision_flops(c) -> float:
    """Multiply-adds x 2 of one image through the vision tower (projection aside)."""
    tokens = c.num_patches + 1
    d, ff = c.hidden_size, c.intermediate_size
    per_layer = tokens * (4 * d * d + 2 * d * ff) + 2 * tokens * tokens * d
    patch = c.num_patches * c.num_channels * c.patch_size**2 * d
    return 2.0 * (c.num_layers * per_layer + patch)


def xla_matmul_gflops(repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    m, k, n = MATMUL
    a = jnp.asarray(np.random.default_rng(0).standard_normal((m, k)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(1).standard_normal((k, n)), jnp.float32)
    f = jax.jit(jnp.matmul)
    t = median_s(lambda: f(a, b).block_until_ready(), repeats * 3)
    return 2 * m * k * n / t / 1e9


def ort_int8_matmul_gflops(repeats: int) -> float:
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from koclip.fast.quantized import _quiet, session

    m, k, n = MATMUL
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((k, n)).astype("f4"), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as d:
        import onnx

        onnx.save_model(model, f"{d}/a.onnx")
        with _quiet():
            quantize_dynamic(
                f"{d}/a.onnx", f"{d}/b.onnx", weight_type=QuantType.QInt8, per_channel=True
            )
        sess = session(Path(f"{d}/b.onnx"))
    a = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    t = median_s(lambda: sess.run(None, {"x": a}), repeats * 3)
    return 2 * m * k * n / t / 1e9


def ov_bf16_matmul_gflops(repeats: int, pairs: int = 4) -> float:
    """OpenVINO bf16 GFLOP/s of the ViT-B MLP's products, `pairs` x (768->3072, 3072->768) in
    one graph: products inside a graph keep bf16 activations, so the float32 input and output
    are converted once, not once per product."""
    from onnx import TensorProto, helper, numpy_helper

    from koclip.fast import bf16

    m, k, n = MATMUL
    rng = np.random.default_rng(1)
    weights, nodes, last = [], [], "x"
    for i in range(pairs):
        for j, (a, b) in enumerate(((k, n), (n, k))):
            name = f"w{i}{j}"
            w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype("f4")
            weights.append(numpy_helper.from_array(w, name))
            nodes.append(helper.make_node("MatMul", [last, name], [f"h{i}{j}"]))
            last = f"h{i}{j}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    y = helper.make_tensor_value_info(last, TensorProto.FLOAT, [m, k])
    model = helper.make_model(
        helper.make_graph(nodes, "mlp", [x], [y], weights),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as d:
        import onnx

        onnx.save_model(model, f"{d}/a.onnx")
        compiled = bf16.compile_tower(Path(f"{d}/a.onnx"))
    request = compiled.create_infer_request()
    a = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    t = median_s(lambda: request.infer({0: a}), repeats * 3)
    return 2 * pairs * 2 * m * k * n / t / 1e9


def torch_model(config: KoCLIPConfig, params: dict):
    from bench.encode import torch_reference

    return torch_reference(config, params)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def top10_overlap(lib_a: np.ndarray, lib_b: np.ndarray, queries: np.ndarray) -> float:
    a = np.argsort(-(queries @ lib_a.T), axis=1)[:, :10]
    b = np.argsort(-(queries @ lib_b.T), axis=1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


ONE_SHOT = """
import sys, time
t = time.perf_counter()
sys.path.insert(0, {repo!r})
from koclip import load_encoder
if {path!r} == "numpy":
    enc = load_encoder({ckpt!r}, ("text",), precision="fp32", backend="numpy")
else:
    from koclip.fast import bf16
    enc = load_encoder({ckpt!r}, ("text",), precision="bf16")
enc.encode_texts(["바닷가에서 노는 강아지"])
print(time.perf_counter() - t)
"""


def one_shot_s(config: KoCLIPConfig, params: dict, repeats: int) -> dict[str, float]:
    """Seconds from a fresh process's start to its first text embedding, after a warm-up run
    that fills the converted-weights cache (as a user's second search finds it)."""
    import subprocess

    from koclip.testing import write_checkpoint

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="koclip-oneshot-") as d:
        ckpt = write_checkpoint(Path(d) / "ckpt", config, params, fmt="safetensors")
        env = {**os.environ, "KOCLIP_CACHE_DIR": str(Path(d) / "cache")}
        repo = str(Path(__file__).resolve().parents[1])
        for path in ("numpy", "bf16"):
            code = ONE_SHOT.format(repo=repo, path=path, ckpt=str(ckpt))
            runs = []
            for _ in range(repeats + 1):
                res = subprocess.run(
                    [sys.executable, "-c", code], capture_output=True, text=True, env=env
                )
                if res.returncode != 0:
                    raise SystemExit(res.stderr[-2000:])
                runs.append(float(res.stdout.split()[-1]))
            out[path] = statistics.median(runs[1:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", choices=["base", "large", "tiny"], default="base")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=64, help="agreement set size")
    ap.add_argument("--library", type=int, default=300, help="library size for the overlap")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--no-text", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-one-shot", action="store_true", help="skip the fresh-process rows")
    args = ap.parse_args()

    import torch

    from koclip.api import KoCLIP
    from koclip.fast import bf16, numpy_encoder, precision, quantized
    from koclip.images.preprocess import preprocess
    from koclip.synthetic import photo_like

    torch.set_num_threads(os.cpu_count() or 1)
    config = getattr(KoCLIPConfig, args.model)()
    load_before = load_average()
    towers = ("vision",) if args.no_text else ("vision", "text")
    params = random_params(config, seed=0, realistic=True)
    if args.no_text:
        from koclip.checkpoints.params import select

        params = select(params, ("vision",))
    rows: list[tuple] = []
    scratch = tempfile.TemporaryDirectory(prefix="koclip-bench-precision-")

    # --- the fast towers, built as `koclip.fast.precision` builds them -------------------------
    fast: dict[str, dict[str, object]] = {"bf16": {}, "int8": {}}
    build_s: dict[str, float] = {}
    for name in fast:
        path = precision.fast_path(name)
        t = time.perf_counter()
        for tw in towers:
            stem = Path(scratch.name) / f"{name}-{tw}"
            path.build(config, params, tw, stem)
            fast[name][tw] = path.open(stem)
        build_s[name] = time.perf_counter() - t

    # --- vision speed --------------------------------------------------------------------
    size = config.vision.image_size
    pixels = np.stack([preprocess(i, size) for i in photo_like(args.batch, size + 32, seed=3)])
    jitted = KoCLIP(config, params)
    fp32_v = args.batch / median_s(
        lambda: np.asarray(jitted.get_image_features(pixels)), args.repeats
    )
    speed = {}
    for name in fast:
        run = fast[name]["vision"]
        speed[name] = args.batch / median_s(lambda run=run: run({"pixels": pixels}), args.repeats)
    rows.append(("vision img/s, bf16 (OpenVINO)", speed["bf16"], speed["bf16"] / fp32_v, ">= 1.7x"))
    rows.append(("vision img/s, int8 (ONNX Runtime)", speed["int8"], speed["int8"] / fp32_v, ""))
    rows.append(("vision img/s, ours fp32 jitted", fp32_v, 1.0, ""))
    model = None
    if not args.no_torch:
        model = torch_model(config, params)
        px = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            pt = args.batch / median_s(
                lambda: model.get_image_features(pixel_values=px), args.repeats
            )
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf = args.batch / median_s(
                    lambda: model.get_image_features(pixel_values=px), args.repeats
                )
        rows.append(("vision img/s, PyTorch fp32", pt, pt / fp32_v, ""))
        rows.append(("vision img/s, PyTorch bf16 autocast", bf, bf / fp32_v, "fast path >= this"))

    # --- text speed ----------------------------------------------------------------------
    if "text" in towers:
        ids, mask = precision.check_texts(config.text, n=1, seed=4)
        feeds = {"input_ids": ids, "attention_mask": mask}
        r = args.repeats * 5
        np_t = median_s(lambda: numpy_encoder.text_features(config, params, ids, mask), r)
        i32, m32 = ids.astype(np.int32), mask.astype(np.int32)
        jit_t = median_s(lambda: np.asarray(jitted.get_text_features(i32, m32)), r)
        for name in fast:
            run = fast[name]["text"]
            t = median_s(lambda run=run: run(feeds), r)
            rows.append((f"text ms/query ({ids.shape[1]} tokens), {name}", t * 1e3, t / jit_t, ""))
        rows.append(("text ms/query, numpy fp32 (one-shot CLI)", np_t * 1e3, np_t / jit_t, ""))
        rows.append(("text ms/query, ours fp32 jitted", jit_t * 1e3, 1.0, ""))
        if model is not None:
            ti = torch.from_numpy(ids)
            with torch.no_grad():
                pt_t = median_s(
                    lambda: model.get_text_features(
                        input_ids=ti,
                        attention_mask=torch.from_numpy(mask),
                        token_type_ids=torch.zeros_like(ti),
                        position_ids=torch.arange(ti.shape[1])[None],
                    ),
                    r,
                )
            rows.append(("text ms/query, PyTorch fp32", pt_t * 1e3, pt_t / jit_t, ""))
        if not args.no_one_shot:
            cold = one_shot_s(config, params, max(1, args.repeats - 1))
            rows.append(("one-shot query, fresh process s, numpy fp32", cold["numpy"], None, ""))
            rows.append(
                ("one-shot query, fresh process s, bf16", cold["bf16"], None, "CLI: the faster")
            )

    # --- matmul ceilings -----------------------------------------------------------------
    xla = xla_matmul_gflops(args.repeats)
    ort_mm = ort_int8_matmul_gflops(args.repeats)
    ov_mm = ov_bf16_matmul_gflops(args.repeats)
    flops = vision_flops(config.vision)
    rows.append((f"matmul {MATMUL} GFLOP/s, XLA fp32", xla, None, ""))
    rows.append((f"matmul {MATMUL} GFLOP/s, OpenVINO bf16", ov_mm, ov_mm / xla, ""))
    rows.append((f"matmul {MATMUL} GFLOP/s, ORT int8", ort_mm, ort_mm / xla, ""))
    rows.append(
        ("vision fp32 jitted, share of XLA fp32 ceiling", fp32_v * flops / 1e9 / xla, None, "")
    )
    rows.append(
        (
            "vision bf16, share of OpenVINO bf16 ceiling",
            speed["bf16"] * flops / 1e9 / ov_mm,
            None,
            "",
        )
    )
    rows.append(
        ("vision int8, share of ORT int8 ceiling", speed["int8"] * flops / 1e9 / ort_mm, None, "")
    )

    # --- agreement and rankings ----------------------------------------------------------
    def vision_all(images):
        px = np.stack([preprocess(i, size) for i in images])
        out = {"fp32": [], **{name: [] for name in fast}}
        for s in range(0, len(px), args.batch):
            chunk = px[s : s + args.batch]
            out["fp32"].append(np.asarray(jitted.get_image_features(chunk)))
            for name in fast:
                out[name].append(fast[name]["vision"]({"pixels": chunk}))
        return {k: unit(np.concatenate(v)) for k, v in out.items()}

    check = vision_all(photo_like(args.images, size + 32, seed=21))
    library = vision_all(photo_like(args.library, size + 32, seed=22))
    image_queries = vision_all(photo_like(args.queries, size + 32, seed=24))["fp32"]
    text_queries = None
    if "text" in towers:
        # Random token sequences through a random text tower: queries unrelated to the photos,
        # whose 10th and 11th scores are closest together (the hardest case for the bound).
        ids, mask = precision.check_texts(config.text, n=args.queries, seed=23)
        text_queries = unit(numpy_encoder.text_features(config, params, ids, mask))
        feeds = {"input_ids": ids, "attention_mask": mask}
    for name in fast:
        cos = float(np.sum(check["fp32"] * check[name], 1).min())
        rows.append((f"{name}: min cosine vs fp32, vision", cos, None, ">= 0.998"))
        ov = top10_overlap(library["fp32"], library[name], image_queries)
        rows.append((f"{name}: top-10 overlap, its library, image queries", ov, None, ">= 0.95"))
        if text_queries is not None:
            ov = top10_overlap(library["fp32"], library[name], text_queries)
            rows.append(
                (f"{name}: top-10 overlap, its library, random-text queries", ov, None, ">= 0.95")
            )
            got = unit(fast[name]["text"](feeds))
            cos = float(np.sum(text_queries * got, 1).min())
            rows.append((f"{name}: min cosine vs fp32, text", cos, None, ">= 0.998"))
            ov = top10_overlap(library["fp32"], library["fp32"], got)
            rows.append((f"{name}: top-10 overlap, its text queries", ov, None, ">= 0.95"))
    spread = library["fp32"] @ library["fp32"].T
    spread = float(spread[~np.eye(len(spread), dtype=bool)].mean())
    scratch.cleanup()

    print(
        f"\nkoclip-{args.model} sizes, realistic random weights, {os.cpu_count()} CPU cores, "
        f"batch {args.batch}, median of {args.repeats}; OpenVINO reports bf16: {bf16.bf16_cpu()}, "
        f"int8 dot product: {quantized.int8_dot_cpu()}"
    )
    print(
        f"load average {load_before:.1f} before, {load_average():.1f} after; building "
        f"({'+'.join(towers)}): bf16 {build_s['bf16']:.1f} s, int8 {build_s['int8']:.1f} s; "
        f"library of {args.library}, mean pair cosine {spread:.2f}; {args.queries} queries"
    )
    print(f"{'measure':<60} {'value':>10} {'ratio':>7}  target")
    print("-" * 92)
    for name, value, ratio, target in rows:
        r = f"{ratio:6.2f}x" if ratio is not None else f"{'':>7}"
        print(f"{name:<60} {value:10.4f} {r}  {target}")
    print("ratio: against our fp32 jitted tower (matmul: against XLA fp32)")


if __name__ == "__main__":
    main()
