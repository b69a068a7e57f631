"""Opt-in: real koclip-base reproduces KoCLIP's reference implementation (skipped without it).

Needs `koclip/koclip-base` and `klue/roberta-large`'s tokenizer in the Hugging Face cache, and
COCO val2017 image 000000039769 (two cats on a sofa) at $KOCLIP_COCO_CATS or
tests/data/000000039769.jpg.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.real_weights

CATS = Path(os.environ.get("KOCLIP_COCO_CATS", Path(__file__).parent / "data" / "000000039769.jpg"))
EXPECTED = {
    "소파 위에 고양이": 0.845,
    "강아지와 강아지 주인": 0.004,
    "쳇바퀴를 달리는 햄스터": 0.046,
    "자동차": 0.106,
}


def _cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename), str)


@pytest.fixture(scope="module")
def koclip_base():
    if not (
        _cached("koclip/koclip-base", "flax_model.msgpack")
        and _cached("klue/roberta-large", "vocab.txt")
    ):
        pytest.skip("real koclip-base weights or klue/roberta-large tokenizer not in the HF cache")
    from koclip import load_koclip

    return load_koclip("koclip-base")


def test_seed_notebook_probabilities(koclip_base):
    if not CATS.is_file():
        pytest.skip(f"COCO image 000000039769 not found at {CATS}")
    import jax

    from koclip import open_image

    model, processor = koclip_base
    text = list(EXPECTED)
    inputs = processor(
        text=text, images=open_image(CATS, draft=False), return_tensors="jax", padding=True
    )
    probs = np.asarray(jax.nn.softmax(model(**inputs).logits_per_image, axis=1))[0]
    for t, p in zip(text, probs, strict=True):
        assert abs(p - EXPECTED[t]) <= 0.02, (t, p)


def test_numpy_towers_match_the_jitted_ones(koclip_base):
    """The one-shot CLI's numpy towers give the jitted encoders' vectors on the real weights."""
    from PIL import Image

    from koclip import load_encoder

    jitted = load_encoder("koclip-base")
    plain = load_encoder("koclip-base", ("text", "vision"), precision="fp32", backend="numpy")
    text = list(EXPECTED)
    np.testing.assert_allclose(plain.encode_texts(text), jitted.encode_texts(text), atol=1e-4)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))]
    if CATS.is_file():
        from koclip import open_image

        images.append(open_image(CATS))
    np.testing.assert_allclose(plain.encode_images(images), jitted.encode_images(images), atol=1e-4)


def test_bf16_towers_agree_with_fp32_on_the_real_weights(koclip_base):
    """The issue-16 bounds on the real checkpoint, for `auto`'s fast path: cosine >= 0.998 and
    top-10 overlap >= 0.95."""
    from koclip import load_encoder
    from koclip.fast import precision as precisions
    from koclip.synthetic import photo_like

    precision = "bf16"
    if precisions.fast_path(precision).available() is not None:
        pytest.skip(precisions.fast_path(precision).available())
    fp32 = load_encoder("koclip-base", ("text", "vision"), precision="fp32", backend="numpy")
    fast = load_encoder("koclip-base", ("text", "vision"), precision=precision)
    images = photo_like(120, size=256, seed=5)
    library_fp32, library_fast = fp32.encode_images(images), fast.encode_images(images)
    assert float(np.min(np.sum(library_fp32 * library_fast, axis=1))) >= precisions.MIN_COSINE
    words = ["고양이", "강아지", "바다", "자동차", "사람", "음식", "산", "하늘", "기차", "꽃"]
    q = fp32.encode_texts(words)
    top = lambda lib: np.argsort(-(q @ lib.T), axis=1)[:, :10]  # noqa: E731
    overlap = np.mean(
        [
            len(set(a) & set(b)) / 10
            for a, b in zip(top(library_fp32), top(library_fast), strict=True)
        ]
    )
    assert overlap >= 0.95
