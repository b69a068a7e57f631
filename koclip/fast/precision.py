"""The towers' arithmetic: choosing fp32, bf16 or int8, checking a fast tower against fp32.

fp32 (the jitted towers of `koclip.api`) is the reference and the fallback. The two fast paths
run a graph of our own parameters (`koclip.fast.onnx_export`) on an inference runtime:

* bf16 (`koclip.fast.bf16`): OpenVINO, products in bfloat16 on CPUs that have it (AMX or
  AVX512-BF16), weights rounded once, no activation scales to guess.
* int8 (`koclip.fast.quantized`): ONNX Runtime, weights int8 per channel, each batch's activations
  their own uint8 scale.

Each fast tower is built on first use per checkpoint and checked against the fp32 numpy tower on
a varied generated set (`agreement`); the model and that verdict are cached beside the converted
weights, keyed by the checkpoint's fingerprint. A tower under `MIN_COSINE` is never used, so
vectors of every precision stay interchangeable in one library (same model fingerprint).

`auto`, the default, takes bf16 where OpenVINO is installed and reports bf16 arithmetic on this
CPU, else fp32. int8 is never chosen by itself: at koclip-base size its rounding moves more
search results than the bound allows (README, `bench/precision.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from koclip.checkpoints.cache import _converted_dir
from koclip.checkpoints.hub import CheckpointFiles, resolve
from koclip.checkpoints.registry import model_id_for
from koclip.config import KoCLIPConfig, TextConfig
from koclip.encoder import Encoder
from koclip.errors import KoCLIPError, PrecisionError
from koclip.fast import bf16, quantized
from koclip.fast.paths import FastPath, Runner
from koclip.files import atomic_path
from koclip.names import DEFAULT_PRECISION, check_precision  # noqa: F401 - DEFAULT_PRECISION re-exported
from koclip.phases import phase

MIN_COSINE = 0.998  # a fast tower's embeddings must agree with fp32's this well to be used
CHECK_IMAGES = 12
CHECK_TEXTS = 12


def _paths() -> dict[str, FastPath]:
    return {"bf16": bf16.PATH, "int8": quantized.PATH}


def fast_path(name: str) -> FastPath:
    return _paths()[name]


# --- choosing a precision -------------------------------------------------------------------


def requested_precision(precision: str | None) -> str:
    """The precision asked for: `precision`, else $KOCLIP_PRECISION, else `DEFAULT_PRECISION`;
    PrecisionError for one that is no precision (names.check_precision)."""
    return check_precision(precision)


def resolve_precision(precision: str | None) -> str:
    """ "fp32", "bf16" or "int8" for a requested precision.

    `auto`: the first fast path that runs here and is worth it (bf16 where the CPU has it),
    else fp32. A fast path asked for outright that cannot run here raises PrecisionError.
    """
    precision = requested_precision(precision)
    if precision == "fp32":
        return "fp32"
    if precision == "auto":
        for name, path in _paths().items():
            if path.chosen_by_auto and path.available() is None:
                return name
        return "fp32"
    reason = fast_path(precision).available()
    if reason is not None:
        raise PrecisionError(reason)
    return precision


def chosen_precision(precision: str | None) -> str:
    """`resolve_precision`, except that `auto` stays fp32 without the converted-weights cache
    ($KOCLIP_NO_CONVERTED_CACHE): every process would build and check its fast towers again."""
    precision = requested_precision(precision)
    if precision == "auto" and os.environ.get("KOCLIP_NO_CONVERTED_CACHE"):
        return "fp32"
    return resolve_precision(precision)


# --- checking a fast tower against fp32 -----------------------------------------------------


def check_texts(
    c: TextConfig, n: int = CHECK_TEXTS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) of `n` random token sequences of varied length, [CLS] ... [SEP] then padding."""
    rng = np.random.default_rng(seed)
    longest = min(24, c.max_positions)
    ids = np.full((n, longest), c.pad_token_id, np.int64)
    mask = np.zeros((n, longest), np.int64)
    for row in range(n):
        length = int(rng.integers(3, longest + 1))
        body = rng.integers(5, c.vocab_size, length - 2)
        ids[row, :length] = [0, *body, 2]
        mask[row, :length] = 1
    return ids, mask


def check_pixels(config: KoCLIPConfig, n: int = CHECK_IMAGES, seed: int = 0) -> np.ndarray:
    """`n` preprocessed photo-like generated images (`koclip.synthetic`), not noise."""
    from koclip.images.preprocess import preprocess
    from koclip.synthetic import photo_like

    size = config.vision.image_size
    return np.stack([preprocess(im, size) for im in photo_like(n, size + 32, seed)])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def agreement(config: KoCLIPConfig, params: Any, tower: str, run: Runner) -> float:
    """Min cosine between `run`'s features and the fp32 numpy tower's on the check set."""
    from koclip.fast import numpy_encoder

    if tower == "vision":
        pixels = check_pixels(config)
        reference = numpy_encoder.image_features(config, params, pixels)
        got = run({"pixels": pixels})
    else:
        ids, mask = check_texts(config.text)
        reference = numpy_encoder.text_features(config, params, ids, mask)
        got = run({"input_ids": ids, "attention_mask": mask})
    return float(_cosines(reference, got).min())


def cache_stem(fingerprint: str, tower: str, path: FastPath, cache_root: Path | None) -> Path:
    """The cached files of one fast tower are this stem + the path's suffixes, and + ".json"
    for the verdict of its check against fp32."""
    return _converted_dir(cache_root) / f"{fingerprint}.{tower}.{path.name}-v{path.version}"


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_verdict(verdict: Path, stem: Path, path: FastPath, tower: str) -> float | None:
    """The cached tower's min cosine, when its verdict is sound and every file beside it is
    the one that was checked (its SHA-256 in the verdict); else None: build it again."""
    try:
        data = json.loads(verdict.read_text(encoding="utf-8"))
        if data.get("format") != path.version:
            return None
        cosine = float(data["min_cosine"])
        digests = data["sha256"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not (math.isfinite(cosine) and -1.0 <= cosine <= 1.0 + 1e-6):
        return None  # a NaN (or a number no cosine is) is no verdict
    if not isinstance(digests, dict) or set(digests) != set(path.suffixes):
        return None
    try:
        with phase(f"checking the cached {path.name} {tower} tower"):
            same = all(_digest(stem.with_name(stem.name + s)) == digests[s] for s in path.suffixes)
    except OSError:
        return None
    return cosine if same else None


def _publish(built: Path, stem: Path, path: FastPath, cosine: float, tower: str) -> None:
    """Move the built files into the cache, the verdict last: a reader that finds the verdict
    finds every file beside it, and checks each against its digest there. A full disk only
    leaves the cache without them."""
    try:
        digests = {s: _digest(built.with_name(built.name + s)) for s in path.suffixes}
        verdict = json.dumps(
            {"format": path.version, "tower": tower, "min_cosine": cosine, "sha256": digests}
        )
        stem.parent.mkdir(parents=True, exist_ok=True)
        for suffix in path.suffixes:
            target = stem.with_name(stem.name + suffix)
            with atomic_path(target) as tmp:
                shutil.move(str(built.with_name(built.name + suffix)), tmp)
        with atomic_path(stem.with_name(stem.name + ".json")) as tmp:
            Path(tmp).write_text(verdict, encoding="utf-8")
    except OSError:
        pass


def checked_tower(
    files: CheckpointFiles, tower: str, path: FastPath, cache_root: Path | None = None
) -> tuple[Runner | None, float]:
    """(runner, min cosine vs fp32) of one tower on a fast path; runner None under MIN_COSINE.

    Built and checked on first use per checkpoint, then read from the cache (unless
    $KOCLIP_NO_CONVERTED_CACHE: then built in a temporary folder each time).
    """
    stem = cache_stem(files.fingerprint, tower, path, cache_root)
    use_cache = not os.environ.get("KOCLIP_NO_CONVERTED_CACHE")
    verdict = stem.with_name(stem.name + ".json")
    whole = all(stem.with_name(stem.name + s).is_file() for s in path.suffixes)
    cosine = _read_verdict(verdict, stem, path, tower) if use_cache and whole else None
    if cosine is not None:
        if cosine < MIN_COSINE:
            return None, cosine
        with contextlib.suppress(Exception):  # damaged files are rebuilt below
            return path.open(stem), cosine
    from koclip.checkpoints.weights import load_params

    params = load_params(files, (tower,), cache_root)
    scratch = None  # beside the cache where it can be written, so publishing is a rename
    if use_cache:
        with contextlib.suppress(OSError):
            stem.parent.mkdir(parents=True, exist_ok=True)
            scratch = str(stem.parent)
    with (
        tempfile.TemporaryDirectory(prefix=f".koclip-{path.name}-", dir=scratch) as tmp,
        phase(f"building the {path.name} {tower} tower (once per model)"),
    ):
        built = Path(tmp) / "tower"
        path.build(files.config, params, tower, built)
        # The runtimes hold what they read (ONNX Runtime a copy, OpenVINO its own weights and
        # a mapping the files' move or removal leaves intact), so this runner outlives them.
        run = path.open(built)
        cosine = agreement(files.config, params, tower, run)
        del params
        if use_cache:
            _publish(built, stem, path, cosine, tower)
    return (run if cosine >= MIN_COSINE else None), cosine


# --- the backend and the loader -------------------------------------------------------------


class GraphKoCLIP:
    """`koclip.encoder`'s backend over a fast path's runners, one per loaded tower."""

    bucketed = False  # any batch shape runs without compiling
    params = None  # the weights live in the runtime

    def __init__(self, config: KoCLIPConfig, runners: dict[str, Runner], precision: str) -> None:
        self.config = config
        self.runners = runners
        self.towers = frozenset(runners)
        self.precision = precision

    def _run(self, tower: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if tower not in self.runners:
            raise KoCLIPError(f"the {tower} tower was not loaded; pass towers=(..., {tower!r})")
        return self.runners[tower](feeds)

    def get_text_features(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self._run("text", {k: np.asarray(v, np.int64) for k, v in feeds.items()})

    def get_image_features(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._run("vision", {"pixels": np.asarray(pixel_values, np.float32)})


def _fast_encoder(
    name_or_path: str | os.PathLike[str],
    precision: str,
    towers: Sequence[str],
    batch_size: int,
    cache_dir: str | None,
    cache_root: Path | None = None,
) -> Encoder:
    """Batch encoders on the fast path `precision` ("bf16" or "int8"); PrecisionError if it
    cannot run here or a tower's embeddings miss fp32's. `koclip.loader.load_encoder` decides
    when to call it."""
    path = fast_path(precision)
    reason = path.available()
    if reason is not None:
        raise PrecisionError(reason)
    files = resolve(name_or_path, cache_dir=cache_dir)
    runners = {}
    for tower in sorted(set(towers)):
        run, cosine = checked_tower(files, tower, path, cache_root)
        if run is None:
            raise PrecisionError(
                f"this checkpoint's {precision} {tower} tower agrees with fp32 only to cosine "
                f"{cosine:.4f} (< {MIN_COSINE}); use `--precision fp32`"
            )
        runners[tower] = run
    tokenizer = None
    if "text" in runners:
        from koclip.tokenizer import load_wordpiece

        tokenizer = load_wordpiece(files.directory, cache_dir)
    model = GraphKoCLIP(files.config, runners, precision)
    return Encoder(model, tokenizer, model_id_for(name_or_path), files.fingerprint, batch_size)
