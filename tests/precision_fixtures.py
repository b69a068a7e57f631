"""Shared measures of the precision tests: query texts, agreement, search overlap."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from koclip import load_encoder
from koclip.fast.precision import MIN_COSINE
from koclip.synthetic import photo_like
from koclip.testing import KOREAN_VOCAB, build_tiny_checkpoint


def realistic_checkpoint(factory: pytest.TempPathFactory, kind: str, seed: int, tag: str) -> Path:
    """A tiny checkpoint whose kernels keep activation scale, as trained towers do."""
    directory = factory.mktemp(f"tiny-{kind}-realistic-{tag}")
    return build_tiny_checkpoint(directory, vision=kind, seed=seed, realistic=True)


KINDS = ("clip", "vit")


def fast_path_fixtures(name: str, seed: int, runs_here: Callable[[pytest.MonkeyPatch], None]):
    """The module fixtures of one fast path's tests, for the test module to bind by name:
    `realistic` (one checkpoint per vision kind), `realistic_clip` (the koclip-base-shaped one
    alone, for the indexing tests) and `encoders` (fp32 numpy and `name` over `realistic`;
    `runs_here` patches what the path needs of this machine while it loads)."""

    @pytest.fixture(scope="module", params=KINDS, name="realistic")
    def realistic(request, tmp_path_factory) -> Path:
        return realistic_checkpoint(tmp_path_factory, request.param, seed=seed, tag=name)

    @pytest.fixture(scope="module", name="realistic_clip")
    def realistic_clip(tmp_path_factory) -> Path:
        return realistic_checkpoint(tmp_path_factory, "clip", seed=seed, tag=f"{name}-index")

    @pytest.fixture(scope="module", name="encoders")
    def encoders(realistic):
        fp32 = load_encoder(realistic, ("text", "vision"), precision="fp32", backend="numpy")
        with pytest.MonkeyPatch.context() as m:
            runs_here(m)
            fast = load_encoder(realistic, ("text", "vision"), precision=name)
        return fp32, fast

    return realistic, realistic_clip, encoders


def one_photo_manifest(root: Path, checkpoint: Path, precision: str):
    """Index one photo under `root` with `checkpoint` in `precision`; the library's manifest."""
    from tests.indexer_fixtures import index, open_lib, write_jpeg

    write_jpeg(root / "a.jpg", 1)
    index(root, checkpoint, precision=precision)
    with open_lib(root) as lib:
        return lib.manifest()


def queries(n: int, seed: int = 0) -> list[str]:
    """`n` short Korean queries of 1-4 words from the tiny vocabulary."""
    rng = np.random.default_rng(seed)
    words = [w for w in KOREAN_VOCAB if not w.startswith("##") and len(w) > 1]
    return [" ".join(rng.choice(words, rng.integers(1, 5))) for _ in range(n)]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1)))  # both are unit rows


def top10_overlap(library_a: np.ndarray, library_b: np.ndarray, q: np.ndarray) -> float:
    """Mean |top-10 of a ∩ top-10 of b| / 10 over the queries `q` (brute-force inner product)."""
    a = np.argsort(-(q @ library_a.T), axis=1)[:, :10]
    b = np.argsort(-(q @ library_b.T), axis=1)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


def check_agreement(fp32, fast, name: str) -> None:
    """`fast` (an encoder on a fast path) agrees with `fp32` to MIN_COSINE on images and texts
    other than the build-time check's."""
    assert fast.precision == name and fp32.precision == "fp32"
    images = photo_like(40, size=288, seed=7)
    assert min_cosine(fp32.encode_images(images), fast.encode_images(images)) >= MIN_COSINE
    texts = queries(40, seed=7)
    assert min_cosine(fp32.encode_texts(texts), fast.encode_texts(texts)) >= MIN_COSINE


def check_rankings(fp32, fast) -> tuple[np.ndarray, np.ndarray]:
    """Top-10 overlap >= 0.95 for `fast`'s image vectors among fp32 ones (fp32 text queries)
    and for `fast`'s text queries on an fp32 library; returns both libraries."""
    images = photo_like(120, size=256, seed=11)
    library_fp32, library_fast = fp32.encode_images(images), fast.encode_images(images)
    texts = queries(40, seed=12)
    assert top10_overlap(library_fp32, library_fast, fp32.encode_texts(texts)) >= 0.95
    assert top10_overlap(library_fp32, library_fp32, fast.encode_texts(texts)) >= 0.95
    return library_fp32, library_fast
