"""The public model objects: `load_koclip` (as KoCLIP's reference implementation calls it) and
the jitted batch encoder.

`KoCLIP` holds a config and a (possibly one-tower) parameter pytree and applies the one
`KoCLIPModule` through jitted pure functions. `koclip.load_encoder` wraps it in
`koclip.encoder`'s batch encoder, which pads every batch to a bucket so XLA compiles once per
bucket shape.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from koclip.checkpoints.hub import CheckpointFiles, resolve
from koclip.checkpoints.params import loaded_towers, tower_params
from koclip.checkpoints.registry import model_id_for
from koclip.checkpoints.weights import load_params
from koclip.config import KoCLIPConfig
from koclip.encoder import Encoder
from koclip.images.preprocess import nfc, preprocess
from koclip.model import KoCLIPModule, logits
from koclip.tokenizer import WordPieceTokenizer, load_wordpiece


@dataclass(frozen=True)
class KoCLIPOutput:
    """What the reference implementation's `model(**inputs)` returned, with its field names."""

    logits_per_image: jax.Array
    logits_per_text: jax.Array
    text_embeds: jax.Array
    image_embeds: jax.Array


@partial(jax.jit, static_argnums=(0, 1))
def _apply(config: KoCLIPConfig, method: str, params: Any, *inputs: jax.Array) -> jax.Array:
    return KoCLIPModule(config).apply({"params": params}, *inputs, method=method)


class KoCLIP:
    """KoCLIP's dual encoder over a parameter pytree (the reference implementation's `model`)."""

    bucketed = True  # jitted: the batch encoder pads to compiled shapes

    def __init__(self, config: KoCLIPConfig, params: dict[str, Any]) -> None:
        self.config = config
        # One device_put of the whole tree: far cheaper than an array at a time.
        self.params = jax.device_put(params)
        self.towers = loaded_towers(self.params)

    def _pixels(self, pixel_values: Any) -> jax.Array:
        pixels = jnp.asarray(pixel_values, dtype=jnp.float32)
        c = self.config.vision.num_channels
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.ndim != 4:
            raise ValueError(f"pixel_values must be 4-d, got shape {pixels.shape}")
        if pixels.shape[-1] != c and pixels.shape[1] == c:
            pixels = jnp.transpose(pixels, (0, 2, 3, 1))  # NCHW (PyTorch processors) -> NHWC
        return pixels

    def _text(self, method: str, input_ids, attention_mask, token_type_ids, position_ids):
        ids = np.asarray(input_ids, dtype=np.int32)
        if ids.ndim == 1:
            ids = ids[None]
        mask = np.ones_like(ids) if attention_mask is None else attention_mask
        types = np.zeros_like(ids) if token_type_ids is None else token_type_ids
        if position_ids is None:
            # KoCLIP was trained in Flax with positions 0..L-1, not RoBERTa's padding offset.
            position_ids = np.broadcast_to(np.arange(ids.shape[-1], dtype=np.int32), ids.shape)
        inputs = (ids, *(np.asarray(x, np.int32).reshape(ids.shape) for x in (mask, types)))
        positions = np.asarray(position_ids, np.int32)
        params = tower_params(self.params, "text")
        return _apply(self.config, method, params, *inputs, positions)

    def _image(self, method: str, pixel_values) -> jax.Array:
        params = tower_params(self.params, "vision")
        return _apply(self.config, method, params, self._pixels(pixel_values))

    def get_text_features(
        self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None
    ) -> jax.Array:
        """Projected (unnormalised) text features, as transformers' method of that name."""
        return self._text("text_features", input_ids, attention_mask, token_type_ids, position_ids)

    def get_image_features(self, pixel_values) -> jax.Array:
        """Projected (unnormalised) image features; NHWC or NCHW pixels."""
        return self._image("image_features", pixel_values)

    def __call__(
        self,
        input_ids=None,
        pixel_values=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        **_: Any,
    ) -> KoCLIPOutput:
        if input_ids is None or pixel_values is None:
            raise ValueError("KoCLIP needs both input_ids and pixel_values")
        text = self._text("encode_text", input_ids, attention_mask, token_type_ids, position_ids)
        image = self._image("encode_image", pixel_values)
        per_text, per_image = logits(text, image, self.params["logit_scale"])
        return KoCLIPOutput(per_image, per_text, text, image)


Images = Image.Image | np.ndarray


class KoCLIPProcessor:
    """Tokenizer + image transform with the reference implementation's call signature."""

    def __init__(
        self, tokenizer: WordPieceTokenizer, image_size: int = 224, max_length: int = 512
    ) -> None:
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_length = max_length

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Images | Sequence[Images] | None = None,
        return_tensors: str = "np",
        padding: bool | str = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """int32 `input_ids`/`attention_mask`/`token_type_ids` and float32 NHWC `pixel_values`.

        `images` are PIL images or (H, W, 3) uint8 arrays, one or a list; `padding` pads to
        the longest text (`True`/"longest") or to `max_length` ("max_length").
        """
        if return_tensors not in ("np", "jax"):
            raise ValueError(f"return_tensors must be 'np' or 'jax', not {return_tensors!r}")
        out: dict[str, Any] = {}
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            max_length = kwargs.get("max_length", self.max_length)
            ids_list = self.tokenizer.batch_ids([nfc(t) for t in texts], max_length)
            length = max_length if padding == "max_length" else None
            out["input_ids"], out["attention_mask"] = self.tokenizer.pad(ids_list, length)
            out["token_type_ids"] = np.zeros_like(out["input_ids"])
        if images is not None:
            single = isinstance(images, Image.Image) or (
                isinstance(images, np.ndarray) and images.ndim == 3
            )
            imgs = [images] if single else list(images)
            out["pixel_values"] = np.stack([preprocess(_as_pil(i), self.image_size) for i in imgs])
        if not out:
            raise ValueError("give text, images or both")
        if return_tensors == "jax":
            out = {k: jnp.asarray(v) for k, v in out.items()}
        return out


def _as_pil(image: Images) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    return Image.fromarray(arr, mode="RGB")


def _load(
    name_or_path: str | os.PathLike[str], towers: Sequence[str], cache_dir: str | None
) -> tuple[CheckpointFiles, KoCLIP]:
    files = resolve(name_or_path, cache_dir=cache_dir)
    params = load_params(files, towers)
    return files, KoCLIP(files.config, params)


def load_koclip(
    name_or_path: str | os.PathLike[str] = "koclip-base", cache_dir: str | None = None
) -> tuple[KoCLIP, KoCLIPProcessor]:
    """The reference implementation's entry point: `model, processor = load_koclip(...)`."""
    files, model = _load(name_or_path, ("text", "vision"), cache_dir)
    tokenizer = load_wordpiece(files.directory, cache_dir)
    processor = KoCLIPProcessor(
        tokenizer, files.config.vision.image_size, min(files.config.text.max_positions, 512)
    )
    return model, processor


def _jitted_encoder(
    name_or_path: str | os.PathLike[str],
    towers: Sequence[str],
    batch_size: int,
    cache_dir: str | None,
) -> Encoder:
    """The batch encoder over the jitted towers asked for (`koclip.loader.load_encoder`)."""
    files, model = _load(name_or_path, towers, cache_dir)
    tokenizer = load_wordpiece(files.directory, cache_dir) if "text" in towers else None
    return Encoder(
        model, tokenizer, model_id_for(name_or_path), files.fingerprint, batch_size=batch_size
    )
