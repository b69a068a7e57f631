"""Our Flax KoCLIP against transformers' PyTorch VisionTextDualEncoderModel on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from koclip import load_koclip
from koclip.checkpoints.params import params_to_pt
from koclip.config import KoCLIPConfig
from koclip.testing import build_tiny_checkpoint, random_params, tiny_vocab, write_checkpoint

pytestmark = pytest.mark.slow

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed (pip install 'koclip-search[torch]')"
)
transformers = pytest.importorskip("transformers")

TEXTS = ["소파 위에 고양이", "강아지와 강아지 주인", "쳇바퀴를 달리는 햄스터", "자동차"]
ATOL = 1e-4


def torch_model(config: KoCLIPConfig, params: dict) -> object:
    """transformers' reference model, loaded with exactly our weights (strict)."""
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    cfg = VisionTextDualEncoderConfig.from_dict(config.to_dual_encoder_json())
    model = VisionTextDualEncoderModel(cfg).eval()
    state = {k: torch.from_numpy(np.array(v)) for k, v in params_to_pt(params, "flat").items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    # Only non-persistent buffers may be absent from our export.
    assert all(k.endswith(("position_ids", "token_type_ids")) for k in missing), missing
    return model


def reference_outputs(model, inputs: dict) -> dict[str, np.ndarray]:
    ids = torch.from_numpy(np.asarray(inputs["input_ids"])).long()
    mask = torch.from_numpy(np.asarray(inputs["attention_mask"])).long()
    # KoCLIP was trained with positions 0..L-1 (Flax), not RoBERTa's padding offset from 2.
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    pixels = torch.from_numpy(np.asarray(inputs["pixel_values"])).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, pixel_values=pixels)
        text_features = model.get_text_features(
            input_ids=ids, attention_mask=mask, position_ids=positions
        )
        image_features = model.get_image_features(pixel_values=pixels)
    as_np = lambda t: (t.pooler_output if hasattr(t, "pooler_output") else t).numpy()  # noqa: E731
    return {
        "logits_per_image": out.logits_per_image.numpy(),
        "logits_per_text": out.logits_per_text.numpy(),
        "text_embeds": out.text_embeds.numpy(),
        "image_embeds": out.image_embeds.numpy(),
        "text_features": as_np(text_features),
        "image_features": as_np(image_features),
    }


def random_images(n: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(320, 240), (200, 300), (224, 224), (640, 480)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % len(sizes)] for i in range(n))
    ]


@pytest.mark.parametrize("vision", ["clip", "vit"])
@pytest.mark.parametrize("fmt", ["msgpack", "safetensors", "safetensors-classic", "bin"])
def test_logits_and_embeddings_match_pytorch(tmp_path, vision, fmt):
    config = KoCLIPConfig.tiny(vision=vision, vocab_size=len(tiny_vocab()))
    params = random_params(config, seed=3)
    write_checkpoint(tmp_path, config, params, fmt=fmt)

    model, processor = load_koclip(str(tmp_path))
    inputs = processor(text=TEXTS, images=random_images(3), return_tensors="np", padding=True)
    assert inputs["attention_mask"].min() == 0, "the batch must exercise padding"
    ours = model(**inputs)
    ref = reference_outputs(torch_model(config, params), inputs)

    for name in ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        np.testing.assert_allclose(
            np.asarray(getattr(ours, name)), ref[name], atol=ATOL, err_msg=name
        )
    text_features = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
    image_features = model.get_image_features(inputs["pixel_values"])
    np.testing.assert_allclose(np.asarray(text_features), ref["text_features"], atol=ATOL)
    np.testing.assert_allclose(np.asarray(image_features), ref["image_features"], atol=ATOL)


def test_transformers_save_pretrained_output_loads(tmp_path):
    """A checkpoint written by transformers itself (its own key layout) gives its own outputs."""
    from transformers import VisionTextDualEncoderConfig, VisionTextDualEncoderModel

    from koclip.testing import write_tokenizer

    config = KoCLIPConfig.tiny(vocab_size=len(tiny_vocab()))
    torch.manual_seed(0)
    model_pt = VisionTextDualEncoderModel(
        VisionTextDualEncoderConfig.from_dict(config.to_dual_encoder_json())
    ).eval()
    model_pt.save_pretrained(tmp_path)
    write_tokenizer(tmp_path)

    model, processor = load_koclip(str(tmp_path))
    inputs = processor(text=TEXTS[:2], images=random_images(2), return_tensors="np")
    ref = reference_outputs(model_pt, inputs)
    np.testing.assert_allclose(
        np.asarray(model(**inputs).logits_per_text), ref["logits_per_text"], atol=ATOL
    )


def test_batch_encoders_match_model_and_ignore_padding(tiny_checkpoint):
    """Bucketed, padded batch encoders give the model's normalised embeddings, row by row."""
    from koclip import load_encoder

    enc = load_encoder(str(tiny_checkpoint), batch_size=4)
    model, processor = load_koclip(str(tiny_checkpoint))
    images = random_images(6, seed=1)
    got = enc.encode_images(images)
    ref = np.asarray(model(**processor(text=["자동차"], images=images)).image_embeds)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # One at a time == in a batch: padding rows and the bucket size do not leak in.
    np.testing.assert_allclose(enc.encode_images(images[:1]), got[:1], atol=1e-5)

    texts = ["소파 위에 고양이", "dog", "바닷가에서 노는 강아지", "자동차", "사진"]
    batch = enc.encode_texts(texts, prompt=None)
    singles = np.concatenate([enc.encode_texts([t], prompt=None) for t in texts])
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    ref_t = np.asarray(model(**processor(text=texts, images=images[:1])).text_embeds)
    np.testing.assert_allclose(batch, ref_t, atol=1e-5)


# --- the numpy towers (one-shot CLI queries) ----------------------------------------------------


@pytest.mark.parametrize(("vision", "fmt"), [("clip", "msgpack"), ("vit", "safetensors")])
def test_numpy_towers_match_pytorch(tmp_path, vision, fmt):
    from koclip import load_encoder
    from koclip.fast.numpy_encoder import image_features, text_features

    config = KoCLIPConfig.tiny(vision=vision, vocab_size=len(tiny_vocab()))
    params = random_params(config, seed=4)
    write_checkpoint(tmp_path, config, params, fmt=fmt)
    _, processor = load_koclip(str(tmp_path))
    images = random_images(3)
    inputs = processor(text=TEXTS, images=images, return_tensors="np", padding=True)
    assert inputs["attention_mask"].min() == 0, "the batch must exercise padding"
    ref = reference_outputs(torch_model(config, params), inputs)

    enc = load_encoder(str(tmp_path), ("text", "vision"), precision="fp32", backend="numpy")
    assert enc.towers == {"text", "vision"}
    got = text_features(config, enc.params, inputs["input_ids"], inputs["attention_mask"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref["text_features"], atol=ATOL)
    got = image_features(config, enc.params, inputs["pixel_values"])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref["image_features"], atol=ATOL)
    np.testing.assert_allclose(enc.encode_texts(TEXTS, prompt=None), ref["text_embeds"], atol=ATOL)
    np.testing.assert_allclose(enc.encode_images(images), ref["image_embeds"], atol=ATOL)


@pytest.mark.parametrize("vision", ["clip", "vit"])
def test_numpy_encoder_matches_the_jitted_one(tmp_path, vision):
    """Same vectors as `Encoder` for every prompt mode, batched or one by one."""
    from koclip import load_encoder

    path = build_tiny_checkpoint(tmp_path, vision=vision, fmt="safetensors", seed=6)
    jitted = load_encoder(str(path))
    plain = load_encoder(str(path), ("text", "vision"), precision="fp32", backend="numpy")
    plain.batch_size = 2  # several chunks, each padded to its own longest text
    assert (plain.fingerprint, plain.dim, plain.model_id) == (
        jitted.fingerprint,
        jitted.dim,
        jitted.model_id,
    )
    texts = ["소파 위에 고양이", "dog", "바닷가에서 노는 강아지와 아이들", "자동차", " 사진 "]
    for prompt in ("이것은 {} 이다.", None, ["이것은 {} 이다.", "{} 사진"]):
        got = plain.encode_texts(texts, prompt=prompt)
        np.testing.assert_allclose(got, jitted.encode_texts(texts, prompt=prompt), atol=1e-5)
        singles = np.concatenate([plain.encode_texts([t], prompt=prompt) for t in texts])
        np.testing.assert_allclose(got, singles, atol=1e-5)
    images = random_images(5, seed=2)
    np.testing.assert_allclose(plain.encode_images(images), jitted.encode_images(images), atol=1e-5)
    assert plain.encode_texts([]).shape == plain.encode_images([]).shape == (0, plain.dim)
    with pytest.raises(ValueError, match="template"):
        plain.encode_texts(texts, prompt=[])
    with pytest.raises(ValueError, match="pixel_values"):
        plain.encode_pixels(np.zeros((1, 32, 32, 3), np.float32))


def test_numpy_encoder_holds_only_the_towers_asked_for(tiny_checkpoint):
    from koclip import KoCLIPError, load_encoder

    text_only = load_encoder(str(tiny_checkpoint), ("text",), precision="fp32", backend="numpy")
    assert text_only.towers == {"text"} and "vision_model" not in text_only.params
    with pytest.raises(KoCLIPError, match="vision tower was not loaded"):
        text_only.encode_images(random_images(1))
    vision_only = load_encoder(str(tiny_checkpoint), ("vision",), precision="fp32", backend="numpy")
    assert vision_only.towers == {"vision"} and vision_only.tokenizer is None
    with pytest.raises(KoCLIPError, match="text tower was not loaded"):
        vision_only.encode_texts(["자동차"])


def test_numpy_activations():
    import math

    import jax

    from koclip.fast.numpy_encoder import erf, gelu, quick_gelu

    x = np.linspace(-8, 8, 40_001, dtype=np.float32)
    exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert erf(x).dtype == gelu(x).dtype == quick_gelu(x).dtype == np.float32
    assert np.abs(erf(x) - exact).max() < 1e-6  # 1.5e-7 for the formula, the rest float32
    np.testing.assert_allclose(gelu(x), np.asarray(jax.nn.gelu(x, approximate=False)), atol=1e-6)
    np.testing.assert_allclose(quick_gelu(x), x * np.asarray(jax.nn.sigmoid(1.702 * x)), atol=1e-6)
