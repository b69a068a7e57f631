"""Korean-captioned handwritten digits for tests and benches: a real, offline data set.

scikit-learn's digits (real 8x8 scans) are written as 224 px pictures, captioned with four Korean
phrasings each, and split into training images (a captions file) and held-out photos whose
names do not give the digit away. `digits_config` and `init_params` make the tiny untrained
KoCLIP that `koclip-search train` turns into a digit reader in a few epochs on a CPU.

Needs scikit-learn (a test dependency) for `write_digits`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from koclip.config import KoCLIPConfig

SINO = ["영", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구"]
NATIVE = ["영", "하나", "둘", "셋", "넷", "다섯", "여섯", "일곱", "여덟", "아홉"]
TRAIN_PER_DIGIT = 60
HELD_OUT_PER_DIGIT = 30
# train.TrainOptions that turn the untrained model into a digit reader in 10 epochs (180 steps):
# what tests/test_digits_e2e.py passes to `koclip-search train` as flags.
TRAIN_RECIPE: dict[str, Any] = {
    "epochs": 10,
    "batch_size": 32,
    "learning_rate": 4e-3,
    "weight_decay": 0.01,
    "warmup": 0.1,
    "max_length": 16,
    "prompt": True,
    "seed": 0,
}


def phrasings(digit: int) -> list[str]:
    """The Korean captions of a digit (and the queries searched for it)."""
    return [
        f"숫자 {SINO[digit]}",
        f"손으로 쓴 {digit}",
        f"숫자 {digit}",
        f"손으로 쓴 숫자 {NATIVE[digit]}",
    ]


def digits_vocab() -> list[str]:
    """klue-ordered specials, the prompt template's pieces, and every caption word."""
    from koclip.testing import SPECIAL_TOKENS

    words = ["이것", "##은", "이", "##다", ".", "숫자", "손", "##으로", "쓴", *SINO, *NATIVE]
    return SPECIAL_TOKENS + list(dict.fromkeys([*words, *"0123456789"]))


def digits_config(vocab_size: int) -> KoCLIPConfig:
    """A tiny KoCLIP for 8x8 digits at the indexer's 224 px: 112 px patches = 4x4 digit pixels."""
    from koclip.config import TextConfig, VisionConfig

    text = TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        max_positions=24,
    )
    vision = VisionConfig(
        hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, patch_size=112
    )
    return KoCLIPConfig(text=text, vision=vision, projection_dim=32)


def init_params(config: KoCLIPConfig, seed: int = 0) -> dict[str, Any]:
    """Fresh-model weights: fan-in scaled kernels, zero biases, unit LayerNorms.

    koclip.testing.random_params (0.05 normal everywhere, noisy LayerNorm biases) makes every
    image embed alike at this width, and contrastive training then collapses instead of learning.
    """
    import jax
    import jax.numpy as jnp
    from flax.traverse_util import flatten_dict, unflatten_dict

    from koclip.model import KoCLIPModule

    ids = jnp.zeros((1, 2), jnp.int32)
    pixels = jnp.zeros((1, 224, 224, 3), jnp.float32)
    module = KoCLIPModule(config)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), ids, pixels, ids, ids, ids))
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in flatten_dict(shapes["params"]).items():
        if path[-1] == "kernel":
            value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        elif path[-1] == "scale":
            value = np.ones(leaf.shape)
        elif path[-1] == "bias":
            value = np.zeros(leaf.shape)
        elif path == ("logit_scale",):
            value = np.asarray(config.logit_scale_init)
        else:  # embedding tables, class embedding
            value = 0.02 * rng.standard_normal(leaf.shape)
        flat[path] = np.asarray(value, np.float32)
    return unflatten_dict(flat)


def digit_image(pixels: np.ndarray) -> Any:
    """An 8x8 scan (0..16) as a 224x224 greyscale PIL picture, each pixel a 28x28 block."""
    from PIL import Image

    grey = (pixels * (255 / 16)).round().astype(np.uint8)
    return Image.fromarray(grey).resize((224, 224), Image.Resampling.NEAREST)


@dataclass(frozen=True)
class Digits:
    """What `write_digits` wrote under its root."""

    root: Path
    captions: Path  # JSON Lines, image paths relative to train_dir
    train_dir: Path
    photos: Path  # the held-out scans, to be indexed
    labels: dict[str, int]  # held-out file name -> digit
    untrained: Path  # the fresh checkpoint training starts from


def write_digits(root: str | Path, *, seed: int = 0) -> Digits:
    """Write the training set, the held-out photos and an untrained checkpoint under `root`.

    The first HELD_OUT_PER_DIGIT scans of each digit are held out, the next TRAIN_PER_DIGIT
    are captioned for training; `seed` seeds the untrained weights.
    """
    from sklearn.datasets import load_digits

    root = Path(root)
    data = load_digits()
    train_dir, photos = root / "train", root / "photos"
    train_dir.mkdir(parents=True)
    photos.mkdir()
    labels: dict[str, int] = {}
    lines = []
    for digit in range(10):
        rows = np.flatnonzero(data.target == digit)
        held, train = rows[:HELD_OUT_PER_DIGIT], rows[HELD_OUT_PER_DIGIT:][:TRAIN_PER_DIGIT]
        for i in held:
            name = f"scan-{i:04d}.png"  # nothing in the name gives the digit away
            digit_image(data.images[i]).save(photos / name)
            labels[name] = digit
        (train_dir / str(digit)).mkdir()
        for i in train:
            name = f"{digit}/{i:04d}.png"
            digit_image(data.images[i]).save(train_dir / name)
            lines.append(
                json.dumps({"image": name, "captions": phrasings(digit)}, ensure_ascii=False)
            )
    captions = root / "captions.jsonl"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    untrained = untrained_checkpoint(root / "untrained", seed)
    return Digits(root, captions, train_dir, photos, labels, untrained)


def untrained_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    """A fresh digits KoCLIP (`init_params(seed)`) written as a checkpoint directory."""
    from koclip.testing import write_checkpoint

    vocab = digits_vocab()
    config = digits_config(len(vocab))
    return write_checkpoint(directory, config, init_params(config, seed), vocab=vocab)
