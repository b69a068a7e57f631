"""Training step throughput: our jitted JAX step vs the same step in PyTorch, same sizes, same run.

    python bench/train.py                       # koclip-base sizes, batch 8, captions of 32 tokens
    python bench/train.py --model tiny --steps 5

One step = forward both towers + symmetric contrastive loss + backward + gradient clipping +
AdamW (CLIP's betas) + logit_scale clamp, on random weights and inputs. The PyTorch side is
transformers' `VisionTextDualEncoderModel` with the same weights (dropout off, as ours has
none), `return_loss=True` (the same CLIP loss) and `torch.optim.AdamW`. Each side gets one
untimed warm-up step (JAX compiles there), then the median of `--steps` timed steps.
Prints one table; the ratio is what matters (machines here are noisy and shared).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import load_line, runs  # noqa: E402
from koclip.checkpoints.params import params_to_pt  # noqa: E402
from koclip.config import KoCLIPConfig  # noqa: E402
from koclip.testing import random_params  # noqa: E402

LR, WEIGHT_DECAY, BETAS, EPS, MAX_NORM = 1e-5, 0.1, (0.9, 0.98), 1e-6, 1.0


def make_inputs(config: KoCLIPConfig, batch: int, length: int) -> dict[str, np.ndarray]:
    from koclip.train import text_batch

    rng = np.random.default_rng(0)
    vocab = config.text.vocab_size
    ids = [[0, *rng.integers(5, vocab, length - 2).tolist(), 2] for _ in range(batch)]
    inputs = text_batch(ids, length, config.text.pad_token_id)
    size = config.vision.image_size
    inputs["pixel_values"] = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    return inputs


def bench_jax(config: KoCLIPConfig, params: dict, inputs: dict, steps: int) -> tuple[float, float]:
    """(seconds of the first step, with compiling; median seconds of a later step)."""
    import jax
    import jax.numpy as jnp

    from koclip.train import make_optimizer, make_train_step

    state = jax.tree_util.tree_map(jnp.asarray, params)
    opt = make_optimizer(
        state, learning_rate=LR, total_steps=1000, weight_decay=WEIGHT_DECAY, b1=BETAS[0],
        b2=BETAS[1], eps=EPS, max_grad_norm=MAX_NORM,
    )  # fmt: skip
    opt_state = opt.init(state)
    step = make_train_step(config, opt)
    batch = {k: jnp.asarray(v) for k, v in inputs.items()}

    def one_step() -> None:
        nonlocal state, opt_state
        state, opt_state, metrics = step(state, opt_state, batch)
        float(metrics["loss"])  # waits for the step

    times = runs(one_step, steps + 1)
    del state, opt_state
    return times[0], statistics.median(times[1:])


def bench_torch(
    config: KoCLIPConfig, params: dict, inputs: dict, steps: int
) -> tuple[float, float]:
    import torch
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = VisionTextDualEncoderConfig.from_dict(config.to_dual_encoder_json())
    with torch.device("meta"):
        model = VisionTextDualEncoderModel(cfg)
    state = {k: torch.from_numpy(v.copy()) for k, v in params_to_pt(params, "flat").items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.eval()  # dropout off: the same arithmetic as our (dropout-free) Flax model
    opt = torch.optim.AdamW(
        model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
    )
    batch = {
        "input_ids": torch.from_numpy(inputs["input_ids"]).long(),
        "attention_mask": torch.from_numpy(inputs["attention_mask"]).long(),
        "position_ids": torch.from_numpy(inputs["position_ids"]).long(),
        "token_type_ids": torch.from_numpy(inputs["token_type_ids"]).long(),
        "pixel_values": torch.from_numpy(inputs["pixel_values"].transpose(0, 3, 1, 2).copy()),
    }

    def one_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(**batch, return_loss=True).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))

    times = runs(one_step, steps + 1)
    return times[0], statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", choices=["base", "large", "tiny"], default="base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=32, help="caption tokens (padded)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    args = ap.parse_args()

    config = getattr(KoCLIPConfig, args.model)()
    params = random_params(config, seed=0)
    inputs = make_inputs(config, args.batch, args.max_length)
    jax_first, jax_step = bench_jax(config, params, inputs, args.steps)
    gc.collect()  # both models at base size do not fit in memory side by side on small boxes
    pt_first, pt_step = bench_torch(config, params, inputs, args.steps)

    b = args.batch
    rows = [
        ("train step img/s", b / jax_step, b / pt_step, pt_step / jax_step),
        ("train step s", jax_step, pt_step, jax_step / pt_step),
        ("first step s (JAX: + compile)", jax_first, pt_first, jax_first / pt_first),
    ]
    print(
        f"\nkoclip-{args.model}, batch {b}, captions {args.max_length} tokens, "
        f"{load_line()}, median of {args.steps} steps"
    )
    print(f"{'':32}{'JAX (ours)':>12}{'PyTorch':>12}{'ours/PT':>10}")
    for name, ours, pt, ratio in rows:
        print(f"{name:32}{ours:12.2f}{pt:12.2f}{ratio:9.2f}x")


if __name__ == "__main__":
    main()
