"""End to end on real data, offline: train, index, search.

scikit-learn's handwritten digits (real scans, 8x8) are captioned in Korean, a tiny KoCLIP is
trained on them from random weights with `koclip-search train`, the held-out digits are indexed
by the real indexer and searched with `search.Searcher`: every digit's text queries must find
that digit (precision@10 >= 0.8) while the untrained model stays near chance (0.1).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytestmark = pytest.mark.slow

SINO = ["영", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구"]
NATIVE = ["영", "하나", "둘", "셋", "넷", "다섯", "여섯", "일곱", "여덟", "아홉"]
TRAIN_PER_DIGIT = 60
HELD_OUT_PER_DIGIT = 30
K = 10


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


def digits_config(vocab_size: int):
    """A tiny KoCLIP for 8x8 digits at the indexer's 224 px: 112 px patches = 4x4 digit pixels."""
    from koclip.config import KoCLIPConfig, TextConfig, VisionConfig, tower_sizes

    sizes = tower_sizes(hidden=32, layers=2, heads=4, intermediate=64)
    text = TextConfig(vocab_size=vocab_size, max_positions=24, **sizes)
    vision = VisionConfig(patch_size=112, **sizes)
    return KoCLIPConfig(text=text, vision=vision, projection_dim=32)


def init_params(config, seed: int = 0) -> dict:
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


def digit_image(pixels: np.ndarray) -> Image.Image:
    """An 8x8 scan (0..16) as a 224x224 greyscale picture, each pixel a 28x28 block."""
    grey = (pixels * (255 / 16)).round().astype(np.uint8)
    return Image.fromarray(grey).resize((224, 224), Image.Resampling.NEAREST)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Training images + captions, held-out photos with their labels, an untrained checkpoint."""
    from sklearn.datasets import load_digits

    from koclip.testing import write_checkpoint

    root = tmp_path_factory.mktemp("digits")
    data = load_digits()
    train_dir, photos = root / "train", root / "photos"
    train_dir.mkdir()
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
        for i in train:
            name = f"{digit}/{i:04d}.png"
            (train_dir / str(digit)).mkdir(exist_ok=True)
            digit_image(data.images[i]).save(train_dir / name)
            lines.append(
                json.dumps({"image": name, "captions": phrasings(digit)}, ensure_ascii=False)
            )
    captions = root / "captions.jsonl"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    vocab = digits_vocab()
    config = digits_config(len(vocab))
    untrained = write_checkpoint(root / "untrained", config, init_params(config), vocab=vocab)
    return {
        "root": root,
        "captions": captions,
        "train_dir": train_dir,
        "photos": photos,
        "labels": labels,
        "untrained": untrained,
    }


def precision_at_k(library: Path, labels: dict[str, int]) -> dict[tuple[int, str], float]:
    """Precision@K of every digit's phrasings, searched as a user would (prompt on)."""
    from search import Searcher

    out = {}
    with Searcher(library) as searcher:
        for digit in range(10):
            queries = phrasings(digit)
            for query, results in zip(queries, searcher.texts(queries, k=K), strict=True):
                assert len(results) == K
                hits = [labels[hit.path.name] == digit for hit in results]
                out[digit, query] = float(np.mean(hits))
    return out


def index(photos: Path, library: Path, model: Path) -> Path:
    """The real indexer, into a library of its own (one per model)."""
    from indexer import IndexOptions, index_photos

    summary = index_photos(
        photos, IndexOptions(library=library, model=str(model), workers=2, batch_size=32)
    )
    assert summary.new == len(list(photos.iterdir())) and not summary.failures
    return library


def test_trained_model_finds_every_digit(digits: dict) -> None:
    from cli import main

    out = digits["root"] / "trained"
    args = [
        "train", str(digits["captions"]), "--images", str(digits["train_dir"]),
        "--from", str(digits["untrained"]), "--out", str(out),
        "--epochs", "10", "--batch-size", "32", "--lr", "4e-3", "--weight-decay", "0.01",
        "--warmup-steps", "0.1", "--max-length", "16", "--prompt", "--seed", "0",
        "--workers", "2", "--json",
    ]  # fmt: skip
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["steps"] == summary["total_steps"] == 10 * (10 * TRAIN_PER_DIGIT // 32)
    losses = [e["loss"] for e in summary["history"]]
    assert losses[-1] < 0.6 * losses[0]

    library = index(digits["photos"], digits["root"] / "lib-trained", out)
    precision = precision_at_k(library, digits["labels"])
    weak = {q: p for q, p in precision.items() if p < 0.8}
    assert not weak, f"precision@{K} below 0.8: {weak}"


def test_untrained_model_is_near_chance(digits: dict) -> None:
    library = index(digits["photos"], digits["root"] / "lib-untrained", digits["untrained"])
    precision = precision_at_k(library, digits["labels"])
    assert np.mean(list(precision.values())) < 0.3  # chance is 0.1
