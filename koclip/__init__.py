"""KoCLIP in JAX/Flax: the model, its checkpoints and its preprocessing.

    from koclip import load_koclip
    model, processor = load_koclip("koclip-base")
    inputs = processor(text=["소파 위에 고양이", "자동차"], images=image, return_tensors="jax")
    probs = jax.nn.softmax(model(**inputs).logits_per_image, axis=1)

Importing `koclip` is cheap: JAX and Flax load on first use of the model objects, so tools
that only need checkpoint ids or image decoding (search's `info`, stored-vector `similar`)
never pay for them.
"""

from typing import TYPE_CHECKING

from koclip.checkpoints import CHECKPOINTS, checkpoint_fingerprint, model_id_for
from koclip.config import KoCLIPConfig, TextConfig, VisionConfig
from koclip.errors import CheckpointError, ImageError, KoCLIPError, KoclipSearchError
from koclip.preprocess import DEFAULT_PROMPT, PREPROCESS_VERSION, open_image, preprocess

if TYPE_CHECKING:
    from koclip.api import (
        KoCLIP,
        KoCLIPEncoder,
        KoCLIPOutput,
        KoCLIPProcessor,
        load_encoder,
        load_koclip,
    )

_LAZY = {
    "KoCLIP",
    "KoCLIPEncoder",
    "KoCLIPOutput",
    "KoCLIPProcessor",
    "load_encoder",
    "load_koclip",
}


def __getattr__(name: str):  # PEP 562: the model half imports JAX, only when asked for
    if name in _LAZY:
        from koclip import api

        return getattr(api, name)
    raise AttributeError(f"module 'koclip' has no attribute {name!r}")


__all__ = [
    "CHECKPOINTS",
    "DEFAULT_PROMPT",
    "PREPROCESS_VERSION",
    "CheckpointError",
    "ImageError",
    "KoCLIP",
    "KoCLIPConfig",
    "KoCLIPEncoder",
    "KoCLIPError",
    "KoclipSearchError",
    "KoCLIPOutput",
    "KoCLIPProcessor",
    "TextConfig",
    "VisionConfig",
    "checkpoint_fingerprint",
    "load_encoder",
    "load_koclip",
    "model_id_for",
    "open_image",
    "preprocess",
]
