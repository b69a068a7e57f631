"""Checkpoint resolution, one-tower loading, tokenisation and every bad input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from koclip import (
    CHECKPOINTS,
    CheckpointError,
    KoCLIPError,
    checkpoint_fingerprint,
    load_encoder,
    load_koclip,
    load_wordpiece,
    resolve,
)
from koclip.testing import build_tiny_checkpoint


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(CheckpointError) as info:
        resolve("koclip-huge")
    for name in CHECKPOINTS:
        assert name in str(info.value)


def test_named_checkpoint_without_cache_is_a_clear_offline_error(tmp_path):
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        resolve("koclip-base", cache_dir=str(tmp_path))


def test_an_unreachable_hub_is_found_out_at_once_not_after_retries(tmp_path):
    """One bounded connection tells the hub does not answer (here: a closed loopback port)."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("TRANSFORMERS_OFFLINE", None)
    code = (
        "from koclip.checkpoints.hub import resolve\n"
        "try:\n    resolve('koclip-base')\nexcept Exception as e:\n"
        "    print(type(e).__name__, e)"
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    took = time.monotonic() - start
    assert out.stdout.startswith("ModelUnavailableError "), out.stdout + out.stderr
    assert f"127.0.0.1:{port}" in out.stdout and "cannot be reached" in out.stdout
    assert "Retrying" not in out.stderr, out.stderr  # the hub client's retries never start
    print(f"answered in {took:.1f} s")  # not asserted: machines differ


def test_one_tower_loads_only_its_weights(tiny_checkpoint):
    text = load_encoder(str(tiny_checkpoint), towers=("text",))
    vision = load_encoder(str(tiny_checkpoint), towers=("vision",))
    assert text.towers == {"text"} and vision.towers == {"vision"}
    assert "vision_model" not in text.model.params and "text_model" not in vision.model.params
    assert text.encode_texts(["고양이"]).shape == (1, 16)
    with pytest.raises(KoCLIPError, match="vision tower was not loaded"):
        text.encode_pixels(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(KoCLIPError, match="text tower was not loaded"):
        vision.encode_texts(["고양이"])


def test_one_tower_from_safetensors_matches_full_model(tmp_path):
    path = build_tiny_checkpoint(tmp_path, fmt="safetensors", seed=5)
    both = load_encoder(str(path))
    text = load_encoder(str(path), towers=("text",))
    np.testing.assert_array_equal(both.encode_texts(["바다"]), text.encode_texts(["바다"]))


def test_fingerprint_and_model_id(tmp_path):
    a = build_tiny_checkpoint(tmp_path / "a", seed=0)
    b = build_tiny_checkpoint(tmp_path / "b", seed=1)
    enc = load_encoder(str(a), towers=("text",))
    assert enc.fingerprint == checkpoint_fingerprint(a)
    assert checkpoint_fingerprint(a) != checkpoint_fingerprint(b)
    assert enc.model_id == str(a.resolve())


def test_hangul_tokenisation_keeps_syllables(tiny_checkpoint):
    tok = load_wordpiece(tiny_checkpoint)
    ids = tok.batch_ids(["소파 위에 고양이"], 40)[0]
    assert tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "소파", "위", "##에", "고양이", "[SEP]"]
    assert tok.pad_token_id == 1 and tok.cls_token_id == 0


def test_nfd_query_embeds_like_nfc(tiny_checkpoint):
    enc = load_encoder(str(tiny_checkpoint), towers=("text",))
    nfd = "\u1100\u1169\u110b\u1163\u11bc\u110b\u1175"  # 고양이, decomposed
    np.testing.assert_array_equal(enc.encode_texts([nfd]), enc.encode_texts(["고양이"]))


def test_prompt_changes_the_embedding(tiny_checkpoint):
    enc = load_encoder(str(tiny_checkpoint), towers=("text",))
    raw = enc.encode_texts(["고양이"], prompt=None)
    templated = enc.encode_texts(["이것은 고양이 이다."], prompt=None)
    np.testing.assert_allclose(enc.encode_texts(["고양이"]), templated, atol=1e-6)
    assert not np.allclose(raw, templated)


def test_corrupt_msgpack(tmp_path):
    path = build_tiny_checkpoint(tmp_path)
    weights = path / "flax_model.msgpack"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_koclip(str(path))


def test_corrupt_safetensors(tmp_path):
    path = build_tiny_checkpoint(tmp_path, fmt="safetensors")
    (path / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_koclip(str(path))


def test_wrong_shapes_and_keys_are_listed_together(tmp_path):
    path = build_tiny_checkpoint(tmp_path, fmt="safetensors")
    cfg = json.loads((path / "config.json").read_text())
    cfg["projection_dim"] = 8
    cfg["text_config"]["num_hidden_layers"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as info:
        load_koclip(str(path))
    msg = str(info.value)
    assert (
        "wrong shape" in msg
        and "text_projection.weight" in msg
        and "visual_projection.weight" in msg
    )
    assert "missing" in msg and "text_model.encoder.layer.2.attention.self.query.weight" in msg


def test_unexpected_keys_are_listed(tmp_path):
    from safetensors.numpy import load_file, save_file

    path = build_tiny_checkpoint(tmp_path, fmt="safetensors")
    state = load_file(str(path / "model.safetensors"))
    state["text_model.extra_head.weight"] = np.zeros((2, 2), np.float32)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="unexpected .*\n.*text_model.extra_head.weight"):
        load_koclip(str(path))


def test_bad_directories(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        resolve(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable config"):
        resolve(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="unsupported model_type"):
        resolve(str(tmp_path))
    path = build_tiny_checkpoint(tmp_path / "ok")
    (path / "flax_model.msgpack").unlink()
    with pytest.raises(CheckpointError, match="no weights file"):
        resolve(str(path))
    file = tmp_path / "file.bin"
    file.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="must be a directory"):
        resolve(str(file))


def test_converted_cache_is_used_and_survives_damage(tmp_path, monkeypatch):
    monkeypatch.setenv("KOCLIP_CACHE_DIR", str(tmp_path / "cache"))
    path = build_tiny_checkpoint(tmp_path / "ckpt", seed=7)
    first = load_encoder(str(path), towers=("text",)).encode_texts(["바다"])
    cached = sorted((tmp_path / "cache" / "converted").glob("*.safetensors"))
    assert [p.name.split(".")[1] for p in cached] == ["text", "vision"]
    # The cached tower is what a second load reads: the original is never opened again.
    import koclip.checkpoints.weights as ckpt

    real_read = ckpt._read_original
    monkeypatch.setattr(ckpt, "_read_original", lambda *a: pytest.fail("original re-read"))
    again = load_encoder(str(path), towers=("text",)).encode_texts(["바다"])
    np.testing.assert_array_equal(first, again)
    monkeypatch.setattr(ckpt, "_read_original", real_read)
    # A damaged cache entry is not fatal: it is rebuilt from the checkpoint.
    path = build_tiny_checkpoint(tmp_path / "ckpt2", seed=8)
    load_encoder(str(path), towers=("text",))
    text_cache = next(
        (tmp_path / "cache" / "converted").glob(f"{checkpoint_fingerprint(path)}.text.*")
    )
    text_cache.write_bytes(b"junk")
    load_encoder(str(path), towers=("text",)).encode_texts(["바다"])
    assert text_cache.stat().st_size > 100


def test_pt_safetensors_tower_cache_holds_only_that_tower(tmp_path, monkeypatch):
    monkeypatch.setenv("KOCLIP_CACHE_DIR", str(tmp_path / "cache"))
    path = build_tiny_checkpoint(tmp_path / "ckpt", fmt="safetensors", seed=2)
    load_encoder(str(path), towers=("vision",))
    names = [p.name for p in (tmp_path / "cache" / "converted").glob("*.safetensors")]
    assert len(names) == 1 and ".vision." in names[0]


def test_bf16_safetensors_load(tmp_path):
    import json as _json
    import struct

    from koclip.checkpoints.safetensors_mmap import open_mmap

    values = np.array([1.0, -2.5, 0.15625], np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    header = _json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    (tmp_path / "t.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header + bits.tobytes()
    )
    np.testing.assert_array_equal(open_mmap(tmp_path / "t.safetensors")["x"], values)


def test_tokenizer_falls_back_to_klue_and_says_so_offline(tmp_path):
    path = build_tiny_checkpoint(tmp_path)
    for f in ("vocab.txt", "tokenizer_config.json"):
        (path / f).unlink()
    with pytest.raises(CheckpointError, match="klue/roberta-large"):
        load_wordpiece(path, cache_dir=str(tmp_path / "empty-cache"))


def test_processor_shapes(tiny_checkpoint):
    from PIL import Image

    model, processor = load_koclip(str(tiny_checkpoint))
    img = Image.new("RGB", (300, 200), (10, 20, 30))
    inputs = processor(text=["소파 위에 고양이", "자동차"], images=[img, img], return_tensors="jax")
    assert inputs["pixel_values"].shape == (2, 224, 224, 3)
    out = model(**inputs)
    assert out.logits_per_image.shape == (2, 2) and out.logits_per_text.shape == (2, 2)
    # NCHW pixels (as PyTorch processors give) are accepted too.
    nchw = np.asarray(inputs["pixel_values"]).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(
        np.asarray(model.get_image_features(nchw)),
        np.asarray(model.get_image_features(inputs["pixel_values"])),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="return_tensors"):
        processor(text=["a"], return_tensors="tf")


def test_processor_takes_numpy_images_like_pil(tiny_checkpoint):
    from PIL import Image

    _, processor = load_koclip(str(tiny_checkpoint))
    array = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    expected = processor(images=image)["pixel_values"]
    assert expected.shape == (1, 224, 224, 3)
    np.testing.assert_array_equal(processor(images=array)["pixel_values"], expected)
    both = processor(images=[array, image])["pixel_values"]
    np.testing.assert_array_equal(both, np.concatenate([expected, expected]))
    with pytest.raises(ValueError, match="uint8"):
        processor(images=array.astype(np.float32))


def test_copying_a_checkpoint_keeps_its_fingerprint(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "a")
    shutil.copytree(path, tmp_path / "b")
    assert checkpoint_fingerprint(path) == checkpoint_fingerprint(tmp_path / "b")


@pytest.mark.slow  # traces the base and large modules
@pytest.mark.parametrize("preset", ["tiny", "tiny-vit", "base", "large"])
def test_shape_cache_stores_the_traced_module(preset, tmp_path):
    from koclip.checkpoints.cache import cached_shapes, expected_shapes, shapes_path
    from koclip.config import KoCLIPConfig
    from koclip.model import param_shapes

    config = {
        "tiny": KoCLIPConfig.tiny(),
        "tiny-vit": KoCLIPConfig.tiny(vision="vit"),
        "base": KoCLIPConfig.base(),
        "large": KoCLIPConfig.large(),
    }[preset]
    assert cached_shapes(config, tmp_path) is None
    traced = param_shapes(config)
    assert expected_shapes(config, tmp_path) == traced
    assert cached_shapes(config, tmp_path) == traced
    # A damaged table is not used, and the next lookup traces and stores it again.
    shapes_path(config, tmp_path).write_text('{"config": 1, "shapes": [')
    assert cached_shapes(config, tmp_path) is None
    assert expected_shapes(config, tmp_path) == traced
    assert cached_shapes(config, tmp_path) == traced


def test_converted_tower_is_checked_without_jax(tmp_path):
    """A one-shot process reads a cached tower and its shape table, and never imports JAX."""
    import os
    import subprocess
    import sys

    path = build_tiny_checkpoint(tmp_path / "ckpt", fmt="safetensors")
    cache = tmp_path / "cache"
    code = (
        "import sys; from koclip import load_params, resolve; "
        f"load_params(resolve({str(path)!r}), ('text',)); print('jax' in sys.modules)"
    )

    def imports_jax() -> bool:
        env = {**os.environ, "KOCLIP_CACHE_DIR": str(cache)}
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        return run.stdout.strip() == "True"

    assert imports_jax()  # the first load traces the module's shapes
    assert not imports_jax()
    next(cache.glob("converted/shapes-*.json")).unlink()  # a lost table is traced again
    assert imports_jax()
    assert not imports_jax()


def test_several_prompt_templates_are_averaged(tiny_checkpoint):
    enc = load_encoder(str(tiny_checkpoint), towers=("text",))
    templates = ["이것은 {} 이다.", "{} 사진"]
    got = enc.encode_texts(["고양이", "dog"], prompt=templates)
    each = [enc.encode_texts(["고양이", "dog"], prompt=t) for t in templates]
    mean = each[0] + each[1]
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(
        enc.encode_texts(["고양이"], prompt=templates[:1]), each[0][:1], atol=1e-6
    )
    with pytest.raises(ValueError, match="at least one"):
        enc.encode_texts(["고양이"], prompt=[])


def test_import_koclip_does_not_load_jax():
    import subprocess
    import sys

    code = "import sys, koclip; koclip.checkpoint_fingerprint; print('jax' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_tiny_embeddings_are_spread(tiny_checkpoint):
    """Distinct inputs give clearly distinct vectors, so ranking tests downstream mean something."""
    from PIL import Image

    enc = load_encoder(str(tiny_checkpoint))
    texts = enc.encode_texts(["소파 위에 고양이", "자동차", "dog", "바다 노을", "숫자 7"])
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (250, 250, 250)]
    images = enc.encode_images([Image.new("RGB", (64, 48), c) for c in colours])
    for m in (texts, images):
        cos = m @ m.T
        assert cos[~np.eye(len(m), dtype=bool)].max() < 0.99


def test_named_checkpoint_is_read_from_the_hub_cache_without_network(tmp_path, monkeypatch):
    """A hub snapshot already in the cache is used as is: no download, no network call."""
    import huggingface_hub

    snapshot = tmp_path / "models--koclip--koclip-base" / "snapshots" / ("a" * 40)
    build_tiny_checkpoint(snapshot)
    refs = tmp_path / "models--koclip--koclip-base" / "refs"
    refs.mkdir()
    (refs / "main").write_text("a" * 40)
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("network used")
    )
    files = resolve("koclip-base", cache_dir=str(tmp_path))
    assert files.model_id == "koclip-base" and files.weights.name == "flax_model.msgpack"
    enc = load_encoder("koclip-base", towers=("text",), cache_dir=str(tmp_path))
    assert enc.model_id == "koclip-base" and enc.encode_texts(["고양이"]).shape == (1, 16)


def test_tiny_random_is_made_locally_and_runs_every_command(tmp_path, monkeypatch):
    """`--model tiny-random`: no download, a stable model id and fingerprint, a real library."""
    from click.testing import CliRunner

    from cli import main
    from koclip.checkpoints.hub import checkpoint_fingerprint

    monkeypatch.setenv("KOCLIP_CACHE_DIR", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(photos / "a.jpg")
    first = checkpoint_fingerprint("tiny-random")
    assert (tmp_path / "cache/tiny-random/config.json").is_file()
    assert checkpoint_fingerprint("tiny-random") == first  # made once, then read
    runner = CliRunner()
    out = runner.invoke(main, ["index", str(photos), "--model", "tiny-random", "--json"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(main, ["search", "바다", "--library", str(photos), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["results"][0]["path"].endswith("a.jpg")
    out = runner.invoke(main, ["info", "--library", str(photos), "--json"])
    assert json.loads(out.stdout)["model"] == "tiny-random"
