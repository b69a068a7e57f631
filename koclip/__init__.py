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

Importing `koclip` is cheap: every name loads its module on first use (JAX and Flax only with
the jitted model objects), so tools that only need checkpoint ids, image decoding or the numpy
towers (search's `info`, one-shot `search`/`similar`) never pay for the rest.
"""

from typing import TYPE_CHECKING

from koclip.errors import (
    CheckpointError,
    ImageError,
    KoCLIPError,
    KoclipSearchError,
    ModelUnavailableError,
    PrecisionError,
)
from koclip.names import PRECISIONS

if TYPE_CHECKING:
    from koclip.api import KoCLIP, KoCLIPOutput, KoCLIPProcessor, load_koclip
    from koclip.checkpoints.cache import default_cache_root
    from koclip.checkpoints.hub import CheckpointFiles, checkpoint_fingerprint, resolve
    from koclip.checkpoints.registry import CHECKPOINTS, is_local, model_id_for
    from koclip.checkpoints.save import save_checkpoint
    from koclip.checkpoints.weights import load_params
    from koclip.config import KoCLIPConfig, TextConfig, VisionConfig
    from koclip.encoder import Encoder
    from koclip.images.preprocess import (
        DEFAULT_PROMPT,
        PREPROCESS_VERSION,
        open_image,
        preprocess,
    )
    from koclip.loader import load_encoder
    from koclip.tokenizer import TOKENIZER_FILES, WordPieceTokenizer, load_wordpiece

# Every public name but the errors and the shared names, by the module that defines it: loaded on
# first use (PEP 562), so `import koclip.names` (what the CLI needs to build its options) loads
# neither numpy, Pillow nor the model code, and the model half loads JAX only when asked for.
_WHERE = {
    "KoCLIP": "koclip.api",
    "KoCLIPOutput": "koclip.api",
    "KoCLIPProcessor": "koclip.api",
    "load_koclip": "koclip.api",
    "default_cache_root": "koclip.checkpoints.cache",
    "CheckpointFiles": "koclip.checkpoints.hub",
    "checkpoint_fingerprint": "koclip.checkpoints.hub",
    "resolve": "koclip.checkpoints.hub",
    "CHECKPOINTS": "koclip.checkpoints.registry",
    "is_local": "koclip.checkpoints.registry",
    "model_id_for": "koclip.checkpoints.registry",
    "save_checkpoint": "koclip.checkpoints.save",
    "load_params": "koclip.checkpoints.weights",
    "KoCLIPConfig": "koclip.config",
    "TextConfig": "koclip.config",
    "VisionConfig": "koclip.config",
    "Encoder": "koclip.encoder",
    "DEFAULT_PROMPT": "koclip.images.preprocess",
    "PREPROCESS_VERSION": "koclip.images.preprocess",
    "open_image": "koclip.images.preprocess",
    "preprocess": "koclip.images.preprocess",
    "load_encoder": "koclip.loader",
    "TOKENIZER_FILES": "koclip.tokenizer",
    "WordPieceTokenizer": "koclip.tokenizer",
    "load_wordpiece": "koclip.tokenizer",
}


def __getattr__(name: str):  # noqa: ANN202 - PEP 562
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'koclip' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once
    return value


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
