"""Training: the contrastive math (koclip.train) and `koclip-search train` (train/)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner
from flax.traverse_util import flatten_dict
from PIL import Image

from koclip import train as T
from koclip.config import KoCLIPConfig
from koclip.testing import random_params, tiny_vocab

# --- the math ------------------------------------------------------------------------------------


def _reference_loss(text: np.ndarray, image: np.ndarray, scale: float) -> float:
    logits = np.exp(scale) * text @ image.T

    def xent(lg: np.ndarray) -> float:
        lg = lg - lg.max(axis=1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
        return float(-np.mean(np.diag(logp)))

    return (xent(logits) + xent(logits.T)) / 2


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_contrastive_loss_matches_reference() -> None:
    rng = np.random.default_rng(0)
    text, image = _unit(rng.standard_normal((7, 5))), _unit(rng.standard_normal((7, 5)))
    got = float(T.contrastive_loss(text, image, jnp.float32(2.3)))
    assert got == pytest.approx(_reference_loss(text, image, 2.3), rel=1e-5)
    # Symmetric: swapping the towers gives the same loss.
    assert float(T.contrastive_loss(image, text, jnp.float32(2.3))) == pytest.approx(got, rel=1e-6)


def test_contrastive_loss_extremes() -> None:
    eye = np.eye(4, dtype=np.float32)
    assert float(T.contrastive_loss(eye, eye, jnp.float32(np.log(100)))) < 1e-3
    same = np.ones((4, 3), np.float32) / np.sqrt(3)
    assert float(T.contrastive_loss(same, same, jnp.float32(1.0))) == pytest.approx(np.log(4))


def test_schedule_warms_up_then_decays_to_zero() -> None:
    sched = T.lr_schedule(1e-3, total_steps=100, warmup_steps=10)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(5e-4)
    assert float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(55)) == pytest.approx(5e-4)
    assert float(sched(100)) == pytest.approx(0.0, abs=1e-12)
    no_warmup = T.lr_schedule(1e-3, total_steps=10, warmup_steps=0)
    assert float(no_warmup(0)) == pytest.approx(1e-3)


def test_warmup_fraction_or_steps() -> None:
    assert T.warmup_steps_for(0.1, 200) == 20
    assert T.warmup_steps_for(0, 200) == 0
    assert T.warmup_steps_for(30, 200) == 30
    assert T.warmup_steps_for(500, 200) == 200
    with pytest.raises(ValueError):
        T.warmup_steps_for(-1, 10)


def test_decay_mask_and_labels() -> None:
    params = {
        "text_model": {"dense": {"kernel": np.zeros((2, 2)), "bias": np.zeros(2)}},
        "text_projection": {"kernel": np.zeros((2, 2))},
        "vision_model": {"LayerNorm": {"scale": np.ones(2)}},
        "visual_projection": {"kernel": np.zeros((2, 2))},
        "logit_scale": np.zeros(()),
    }
    mask = flatten_dict(T.decay_mask(params))
    assert mask[("text_model", "dense", "kernel")] and not mask[("text_model", "dense", "bias")]
    assert not mask[("vision_model", "LayerNorm", "scale")] and not mask[("logit_scale",)]
    labels = flatten_dict(T.param_labels(params, "vision"))
    assert labels[("visual_projection", "kernel")] == "frozen"
    assert labels[("vision_model", "LayerNorm", "scale")] == "frozen"
    assert labels[("text_model", "dense", "kernel")] == "train"
    assert labels[("logit_scale",)] == "train"
    with pytest.raises(ValueError):
        T.make_optimizer(params, learning_rate=1e-3, total_steps=10, freeze="audio")  # type: ignore[arg-type]


def test_text_batch_pads_to_fixed_length() -> None:
    batch = T.text_batch([[0, 7, 2], [0, 8, 9, 10, 11, 2]], max_length=5, pad_id=1)
    assert batch["input_ids"].tolist() == [[0, 7, 2, 1, 1], [0, 8, 9, 10, 11]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4]] * 2
    assert batch["input_ids"].dtype == np.int32 and not batch["token_type_ids"].any()


@pytest.mark.slow
def test_step_learns_and_frozen_tower_keeps_its_weights() -> None:
    config = KoCLIPConfig.tiny(vocab_size=len(tiny_vocab()))
    start = random_params(config, seed=3)
    params = jax.tree_util.tree_map(jnp.asarray, start)
    opt = T.make_optimizer(params, learning_rate=3e-3, total_steps=8, freeze="vision")
    step = T.make_train_step(config, opt, freeze="vision")
    rng = np.random.default_rng(0)
    batch = T.text_batch([[0, 5 + i, 6 + 2 * i, 2] for i in range(4)], 8, 1)
    batch["pixel_values"] = rng.standard_normal((4, 224, 224, 3)).astype(np.float32)
    opt_state = opt.init(params)
    losses = []
    for _ in range(8):
        params, opt_state, metrics = step(params, opt_state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    before, after = flatten_dict(start), flatten_dict(jax.device_get(params))
    for key, value in before.items():
        if key[0] in ("vision_model", "visual_projection"):
            np.testing.assert_array_equal(after[key], value, err_msg=str(key))
    moved = [k for k in before if k[0] == "text_model" and not np.array_equal(after[k], before[k])]
    assert moved
    assert float(params["logit_scale"]) != pytest.approx(float(start["logit_scale"]), abs=1e-7)


# --- `koclip-search train` ---------------------------------------------------------------------

WORDS = ["고양이", "강아지", "자동차", "바다", "노을", "사람"]
COLOURS = [
    (200, 30, 30),
    (30, 200, 30),
    (30, 30, 200),
    (220, 220, 40),
    (40, 200, 200),
    (90, 90, 90),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """12 small photos in two folders (one with a Korean name) and their captions."""
    root = tmp_path_factory.mktemp("train-data")
    images = root / "images"
    lines = []
    rng = np.random.default_rng(0)
    for i in range(12):
        rel = f"{'여행' if i % 2 else 'home'}/{i:02d}.png"
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        base = np.asarray(COLOURS[i % 6], np.float32)
        noise = rng.normal(0, 20, (40, 56, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(images / rel)
        word = WORDS[i % 6]
        lines.append(
            json.dumps({"image": rel, "captions": [word, f"빨간 {word}"]}, ensure_ascii=False)
        )
    captions = root / "captions.jsonl"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return captions, images


def _args(captions: Path, images: Path, base: Path, out: Path, *extra: str) -> list[str]:
    # The same shapes and schedule in every run of this module: XLA compiles the step once.
    return [
        "train", str(captions), "--images", str(images), "--from", str(base), "--out", str(out),
        "--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--max-length", "8",
        "--workers", "2", "--json", *extra,
    ]  # fmt: skip


def _run(args: list[str]):
    from cli import main

    return CliRunner().invoke(main, args)


def _weights(checkpoint: Path) -> dict:
    from koclip import load_params, resolve

    return flatten_dict(load_params(resolve(checkpoint), ("text", "vision")))


@pytest.mark.slow
def test_train_writes_a_loadable_checkpoint(dataset, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from koclip import load_encoder, load_koclip

    captions, images = dataset
    out = tmp_path / "out"
    result = _run(_args(captions, images, tiny_checkpoint, out))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["steps"] == summary["total_steps"] == 6  # 12 images / 4 per step x 2 epochs
    assert [e["epoch"] for e in summary["history"]] == [1, 2]
    assert summary["train_images"] == 12 and summary["val_images"] == 0

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "flax_model.msgpack", "training.json"} <= names
    # The tokenizer's files come from the base checkpoint, as they were.
    for name in ("vocab.txt", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (tiny_checkpoint / name).read_bytes()
    assert "train_state.msgpack" not in names  # finished: AdamW's moments are not kept
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out")]  # no temp left

    encoder = load_encoder(str(out))
    assert encoder.encode_texts(["고양이"]).shape == (1, 16)
    model, processor = load_koclip(str(out))
    assert model.config == KoCLIPConfig.tiny(vocab_size=len(tiny_vocab()))
    before, after = _weights(tiny_checkpoint), _weights(out)
    assert set(before) == set(after)
    assert any(not np.array_equal(before[k], after[k]) for k in before)

    # The same command again: the run is finished, nothing to do.
    again = _run(_args(captions, images, tiny_checkpoint, out))
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["steps_this_run"] == 0
    # Other settings would mix two runs: refused, with the difference named.
    other = _run(_args(captions, images, tiny_checkpoint, out, "--seed", "5"))
    assert other.exit_code == 1 and "seed: was 0, now 5" in other.output


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(
    dataset, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from train import TrainOptions, train

    captions, images = dataset
    straight = tmp_path / "straight"
    result = _run(_args(captions, images, tiny_checkpoint, straight))
    assert result.exit_code == 0, result.output

    options = TrainOptions(
        epochs=2, batch_size=4, learning_rate=1e-3, max_length=8, workers=2, save_every=1
    )

    def stop_at_5(progress) -> None:
        if progress.step == 5 and not progress.epoch_done:
            raise KeyboardInterrupt  # as Ctrl-C after step 5, before its checkpoint

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(captions, images, tiny_checkpoint, resumed, options, progress=stop_at_5)
    meta = json.loads((resumed / "training.json").read_text(encoding="utf-8"))
    assert meta["step"] == 4 and not meta["finished"]  # mid-epoch 2: 1 of its 3 steps done
    assert (resumed / "train_state.msgpack").is_file()

    result = _run(_args(captions, images, tiny_checkpoint, resumed))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["resumed_from_step"] == 4 and summary["steps_this_run"] == 2
    a, b = _weights(straight), _weights(resumed)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6, err_msg=str(key))


@pytest.mark.slow
def test_validation_split_and_frozen_tower(dataset, tiny_checkpoint: Path, tmp_path: Path) -> None:
    captions, images = dataset
    out = tmp_path / "out"
    result = _run(
        _args(captions, images, tiny_checkpoint, out, "--val-split", "0.25", "--freeze", "vision")
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["train_images"] == 9 and summary["val_images"] == 3
    assert summary["total_steps"] == 4  # 9 // 4 = 2 steps per epoch
    for epoch in summary["history"]:
        val = epoch["validation"]
        assert val["images"] == 3 and val["captions"] == 6
        assert set(val["text_to_image"]) == {"R@1", "R@5", "R@10"}
        assert val["text_to_image"]["R@5"] == 1.0  # only 3 images: every one is in the top 5
    before, after = _weights(tiny_checkpoint), _weights(out)
    for key in before:
        if key[0] in ("vision_model", "visual_projection"):
            np.testing.assert_array_equal(after[key], before[key], err_msg=str(key))


def test_train_refuses_bad_input(dataset, tiny_checkpoint: Path, tmp_path: Path) -> None:
    captions, images = dataset
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.jpg").write_bytes(b"mine")
    result = _run(_args(captions, images, tiny_checkpoint, foreign))
    assert result.exit_code == 1 and "holds no koclip-search training run" in result.output
    assert (foreign / "keep.jpg").read_bytes() == b"mine"

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "home/00.png", "captions": ["고양이"]}\n{"image": 3}\n', "utf-8")
    result = _run(_args(bad, images, tiny_checkpoint, tmp_path / "o1"))
    assert result.exit_code == 1 and "line 2" in result.output and '"image"' in result.output

    result = _run(_args(captions, images, tiny_checkpoint, tmp_path / "o2", "--max-length", "99"))
    assert result.exit_code == 1 and "over the model's 40 text positions" in result.output

    result = _run(_args(captions, images, tiny_checkpoint, tmp_path / "o3", "--warmup-steps", "x"))
    assert result.exit_code == 2
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
