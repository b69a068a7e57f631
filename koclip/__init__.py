"""KoCLIP in JAX/Flax: the model, its checkpoints and its preprocessing.

    from koclip import load_koclip
    model, processor = load_koclip("koclip-base")
    inputs = processor(text=["소파 위에 고양이", "자동차"], images=image, return_tensors="jax")
    probs = jax.nn.softmax(model(**inputs).logits_per_image, axis=1)

`load_encoder(name, towers, precision=..., backend=...)` is the one loader of batch encoders
(`koclip.loader`: which towers run, fp32 jitted or numpy, bf16 or int8).

The folders: `checkpoints/` (finding, reading, converting and writing checkpoints), `images/`
(decoding, the model's transform, perceptual fingerprints), `fast/` (precisions and the numpy
towers); `names` holds what every layer shares and imports nothing.

Importing `koclip` is cheap: JAX and Flax load on first use of the jitted model objects, so
tools that only need checkpoint ids, image decoding or the numpy towers (search's `info`,
one-shot `search`/`similar`) never pay for them.
"""

from typing import TYPE_CHECKING

from koclip.checkpoints.cache import default_cache_root
from koclip.checkpoints.hub import CheckpointFiles, checkpoint_fingerprint, resolve
from koclip.checkpoints.registry import CHECKPOINTS, is_local, model_id_for
from koclip.checkpoints.save import save_checkpoint
from koclip.checkpoints.weights import load_params
from koclip.config import KoCLIPConfig, TextConfig, VisionConfig
from koclip.encoder import Encoder
from koclip.errors import (
    CheckpointError,
    ImageError,
    KoCLIPError,
    KoclipSearchError,
    ModelUnavailableError,
    PrecisionError,
)
from koclip.images.preprocess import DEFAULT_PROMPT, PREPROCESS_VERSION, open_image, preprocess
from koclip.loader import load_encoder
from koclip.names import PRECISIONS
from koclip.tokenizer import TOKENIZER_FILES, WordPieceTokenizer, load_wordpiece

if TYPE_CHECKING:
    from koclip.api import (
        KoCLIP,
        KoCLIPOutput,
        KoCLIPProcessor,
        load_koclip,
    )

_LAZY = {
    "KoCLIP",
    "KoCLIPOutput",
    "KoCLIPProcessor",
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
    "PRECISIONS",
    "PREPROCESS_VERSION",
    "TOKENIZER_FILES",
    "CheckpointError",
    "CheckpointFiles",
    "Encoder",
    "ImageError",
    "KoCLIP",
    "KoCLIPConfig",
    "KoCLIPError",
    "KoclipSearchError",
    "KoCLIPOutput",
    "KoCLIPProcessor",
    "ModelUnavailableError",
    "PrecisionError",
    "TextConfig",
    "VisionConfig",
    "WordPieceTokenizer",
    "checkpoint_fingerprint",
    "default_cache_root",
    "is_local",
    "load_encoder",
    "load_koclip",
    "load_params",
    "load_wordpiece",
    "model_id_for",
    "open_image",
    "preprocess",
    "resolve",
    "save_checkpoint",
]
