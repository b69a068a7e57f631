"""Encoder speed: our jitted Flax towers vs transformers' PyTorch model, same sizes, same run.

    python bench/encode.py                 # koclip-base sizes, random weights
    python bench/encode.py --load          # also: checkpoint on disk -> first text embedding
    python bench/encode.py --draft-check   # also: JPEG draft decoding vs the exact path

Prints one table; ratios are what matter (machines here are noisy).
Targets (issue 2): vision >= 1.8x PyTorch fp32 img/s at batch 32; text latency at batch 1
<= 0.5x PyTorch fp32; model load to first embedding in seconds.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import load_line, runs  # noqa: E402
from koclip.checkpoints.params import params_to_pt  # noqa: E402
from koclip.config import KoCLIPConfig  # noqa: E402
from koclip.testing import random_params  # noqa: E402

QUERY = "바닷가에서 노는 강아지"


def torch_reference(config: KoCLIPConfig, params: dict):
    import torch
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = VisionTextDualEncoderConfig.from_dict(config.to_dual_encoder_json())
    with torch.device("meta"):
        model = VisionTextDualEncoderModel(cfg)
    state = {k: torch.from_numpy(v) for k, v in params_to_pt(params, "flat").items()}
    model.load_state_dict(state, strict=False, assign=True)
    return model.eval()


def bench_towers(config: KoCLIPConfig, params: dict, batch: int, repeats: int) -> list[tuple]:
    import torch

    from koclip.api import KoCLIP
    from koclip.encoder import Encoder
    from koclip.testing import tiny_vocab
    from koclip.tokenizer import WordPieceTokenizer

    tokenizer = WordPieceTokenizer({t: i for i, t in enumerate(tiny_vocab())})
    enc = Encoder(KoCLIP(config, params), tokenizer, "bench", "bench", batch_size=batch)
    model = torch_reference(config, params)

    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((batch, 224, 224, 3)).astype(np.float32)
    pixels_t = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())
    enc.encode_pixels(pixels)  # compile
    with torch.no_grad():
        model.get_image_features(pixel_values=pixels_t)
        ours_v = statistics.median(runs(lambda: enc.encode_pixels(pixels), repeats))
        pt_v = statistics.median(
            runs(lambda: model.get_image_features(pixel_values=pixels_t), repeats)
        )

    enc.encode_texts([QUERY])  # compile
    ids = tokenizer.batch_ids([f"이것은 {QUERY} 이다."], 512)
    ids = {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.ones(1, len(ids[0]), dtype=torch.long),
    }
    positions = torch.arange(ids["input_ids"].shape[1])[None]
    with torch.no_grad():
        run_pt = lambda: model.get_text_features(  # noqa: E731
            input_ids=ids["input_ids"],
            attention_mask=ids["attention_mask"],
            token_type_ids=torch.zeros_like(ids["input_ids"]),
            position_ids=positions,
        )
        run_pt()
        ours_t = statistics.median(runs(lambda: enc.encode_texts([QUERY]), repeats * 5))
        pt_t = statistics.median(runs(run_pt, repeats * 5))
    return [
        (
            f"vision img/s (batch {batch})",
            batch / ours_v,
            batch / pt_v,
            (batch / ours_v) / (batch / pt_v),
            ">= 1.8x",
        ),
        ("text ms/query (batch 1)", ours_t * 1e3, pt_t * 1e3, ours_t / pt_t, "<= 0.5x"),
    ]


def bench_load(config: KoCLIPConfig, params: dict) -> list[tuple]:
    """Checkpoint on disk (the hub's msgpack format) -> first text embedding, cold then cached."""
    import subprocess

    from koclip.testing import write_checkpoint

    rows = []
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as cache:
        write_checkpoint(Path(d) / "ckpt", config, params, fmt="msgpack")
        code = (
            "import time; t=time.perf_counter(); from koclip import load_encoder; "
            f"e=load_encoder({str(Path(d) / 'ckpt')!r}, towers=('text',)); e.encode_texts(['{QUERY}']); "
            "print(time.perf_counter()-t)"
        )
        env = dict(os.environ, KOCLIP_CACHE_DIR=cache)
        for label in (
            "first load (msgpack read + one-tower cache written)",
            "second load (one tower memory-mapped)",
        ):
            out = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            rows.append((label, float(out.stdout.strip().splitlines()[-1]), None, None, "seconds"))
    return rows


def bench_draft(config: KoCLIPConfig, params: dict, n: int) -> list[tuple]:
    """JPEG draft decoding vs full decode: time per 12 MP photo, embedding cosine."""
    from PIL import Image

    from koclip.api import KoCLIP
    from koclip.encoder import Encoder
    from koclip.images.preprocess import DRAFT_FACTOR, open_image, preprocess

    enc = Encoder(KoCLIP(config, params), None, "bench", "bench", batch_size=8)
    rng = np.random.default_rng(1)
    files = []
    for i in range(n):
        h, w = 3000, 4000
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 6.28, 3)
        img = np.stack(
            [
                127 + 100 * np.sin(x / (150 + 40 * i) + phase[c]) * np.cos(y / 220 + c)
                for c in range(3)
            ],
            -1,
        )
        img += rng.normal(0, 12, img.shape)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        files.append(buf.getvalue())

    def decode(factor: int) -> np.ndarray:
        return np.stack(
            [
                preprocess(open_image(io.BytesIO(f), draft=factor > 0, draft_factor=factor))
                for f in files
            ]
        )

    exact_t = statistics.median(runs(lambda: decode(0), 2)) / n
    exact = enc.encode_pixels(decode(0))
    rows = []
    for factor in (2, DRAFT_FACTOR):
        draft_t = statistics.median(runs(lambda f=factor: decode(f), 2)) / n
        cos = np.sum(exact * enc.encode_pixels(decode(factor)), axis=1)
        default = " (default)" if factor == DRAFT_FACTOR else ""
        rows += [
            (
                f"12 MP decode+preprocess ms, draft x{factor}{default}",
                draft_t * 1e3,
                exact_t * 1e3,
                draft_t / exact_t,
                "vs exact",
            ),
            (
                f"min embedding cosine, draft x{factor} vs exact",
                float(cos.min()),
                1.0,
                None,
                ">= 0.999",
            ),
        ]
        if factor == DRAFT_FACTOR:
            break
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", choices=["base", "large", "tiny"], default="base")
    ap.add_argument(
        "--load", action="store_true", help="also time checkpoint load to first embedding"
    )
    ap.add_argument("--draft-check", action="store_true", help="also compare JPEG draft decoding")
    ap.add_argument("--draft-images", type=int, default=4)
    args = ap.parse_args()

    config = getattr(KoCLIPConfig, args.model)()
    params = random_params(config, seed=0)
    rows = bench_towers(config, params, args.batch, args.repeats)
    if args.load:
        rows += bench_load(config, params)
    if args.draft_check:
        rows += bench_draft(config, params, args.draft_images)

    print(f"\nkoclip-{args.model} sizes, random weights, {load_line()}, fp32")
    print(f"{'measure':<52} {'ours':>10} {'baseline':>10} {'ratio':>7}  target")
    print("-" * 92)
    for name, ours, base, ratio, target in rows:
        b = f"{base:10.4f}" if base is not None else f"{'':>10}"
        r = f"{ratio:6.2f}x" if ratio is not None else f"{'':>7}"
        print(f"{name:<52} {ours:10.4f} {b} {r}  {target}")
    print(
        "baseline: transformers PyTorch VisionTextDualEncoderModel (fp32), or the exact decode path"
    )


if __name__ == "__main__":
    main()
