"""`koclip-search eval`: the captions reader, recall@k, and evaluation through search's path."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from train import CaptionsError, Recall, read_captions, recall_at_k

# --- captions ----------------------------------------------------------------------------------


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "여행").mkdir(parents=True)
    for name in ("a.jpg", "여행/바다.jpg"):
        Image.new("RGB", (32, 24), (200, 100, 50)).save(root / name)
    return root


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "captions.jsonl"
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def test_reads_records_nfc_and_skips_blank_lines(tmp_path: Path, images: Path) -> None:
    nfd = unicodedata.normalize("NFD", "여행/바다.jpg")
    text = (
        '\ufeff{"image": "a.jpg", "captions": ["고양이", "  소파 위 고양이 "], "id": 7}\n'
        "\n" + json.dumps({"image": nfd, "captions": [unicodedata.normalize("NFD", "바다")]}) + "\n"
    )
    records = read_captions(_write(tmp_path, text), images)
    assert [r.line for r in records] == [1, 3]
    assert records[0].captions == ("고양이", "소파 위 고양이")
    assert records[1].image == "여행/바다.jpg" and records[1].captions == ("바다",)
    assert records[1].path == images / "여행" / "바다.jpg"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('["a.jpg"]', "expected a JSON object, got list"),
        ('{"captions": ["x"]}', '"image" must be a non-empty string'),
        ('{"image": "", "captions": ["x"]}', '"image" must be a non-empty string'),
        ('{"image": "a.jpg"}', '"captions" must be a non-empty list'),
        ('{"image": "a.jpg", "captions": []}', '"captions" must be a non-empty list'),
        ('{"image": "a.jpg", "captions": "고양이"}', '"captions" must be a non-empty list'),
        ('{"image": "a.jpg", "captions": ["ok", 3]}', "caption 2 must be a non-empty string"),
        ('{"image": "a.jpg", "captions": ["ok", " "]}', "caption 2 must be a non-empty string"),
        ('{"image": "/etc/passwd", "captions": ["x"]}', "must be relative to --images"),
        ('{"image": "없는.jpg", "captions": ["x"]}', "not found under"),
        ('{"image": "a.jpg", "captions": ["x"]}', "already on line 1"),
    ],
)
def test_bad_line_names_line_and_reason(
    tmp_path: Path, images: Path, line: str, reason: str
) -> None:
    good = '{"image": "a.jpg", "captions": ["고양이"]}\n'
    with pytest.raises(CaptionsError) as err:
        read_captions(_write(tmp_path, good + "\n" + line + "\n"), images)
    assert "line 3" in str(err.value) and reason in str(err.value)


def test_bad_encoding_and_empty_files(tmp_path: Path, images: Path) -> None:
    with pytest.raises(CaptionsError, match=r"line 2: not UTF-8"):
        read_captions(
            _write(tmp_path, b'{"image": "a.jpg", "captions": ["x"]}\n\xff\xfe\n'), images
        )
    with pytest.raises(CaptionsError, match="no captioned images"):
        read_captions(_write(tmp_path, "\n\n"), images)
    with pytest.raises(CaptionsError, match="cannot read"):
        read_captions(tmp_path / "missing.jsonl", images)
    with pytest.raises(CaptionsError, match="not a folder"):
        read_captions(_write(tmp_path, "{}"), tmp_path / "nowhere")


# --- recall@k ----------------------------------------------------------------------------------


def _reference(image_vecs, caption_vecs, caption_image, ks):
    """Brute force in numpy: rank by cosine, stable on ties by row."""
    t2i = {}
    i2t = {}
    sims = caption_vecs @ image_vecs.T
    for k in ks:
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        t2i[k] = float(np.mean([caption_image[j] in top[j] for j in range(len(caption_vecs))]))
        top_c = np.argsort(-sims.T, axis=1, kind="stable")[:, :k]
        i2t[k] = float(np.mean([i in caption_image[top_c[i]] for i in range(len(image_vecs))]))
    return t2i, i2t


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_recall_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    images = _unit(rng.standard_normal((40, 8)))
    counts = rng.integers(1, 4, size=40)
    caption_image = np.repeat(np.arange(40), counts)
    captions = _unit(images[caption_image] + 0.9 * rng.standard_normal((len(caption_image), 8)))
    got = recall_at_k(images, captions, caption_image, (1, 5, 10))
    want = _reference(images, captions, caption_image, (1, 5, 10))
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w)
    assert 0 < got[0][1] < got[0][5] < got[0][10] < 1  # not a degenerate case


def test_recall_perfect_and_fewer_items_than_k() -> None:
    images = np.eye(3, dtype=np.float32)
    caption_image = np.array([0, 0, 1, 2])
    t2i, i2t = recall_at_k(images, images[caption_image], caption_image, (1, 5, 10))
    assert t2i == {1: 1.0, 5: 1.0, 10: 1.0} and i2t == {1: 1.0, 5: 1.0, 10: 1.0}
    # A caption whose nearest image is another one: found at rank 2.
    captions = _unit(np.array([[0.9, 1.0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32))
    t2i, _ = recall_at_k(images, captions, caption_image, (1, 2))
    assert t2i == {1: 0.75, 2: 1.0}


def test_recall_report_json_and_table() -> None:
    r = Recall(
        {1: 0.5, 5: 0.75, 10: 1.0}, {1: 0.25, 5: 0.5, 10: 1.0}, 4, 8, model="m", prompt=False
    )
    assert r.mean == pytest.approx((0.5 + 0.75 + 1 + 0.25 + 0.5 + 1) / 6)
    data = r.to_json()
    assert data["text_to_image"] == {"R@1": 0.5, "R@5": 0.75, "R@10": 1.0}
    assert data["prompt"] is False and data["images"] == 4 and data["captions"] == 8
    text = r.to_text()
    assert "text → image" in text and "50.0" in text and "without a prompt" in text


# --- through search's encoders -------------------------------------------------------------------

COLOURS = {"빨간": (220, 30, 30), "파란": (30, 30, 220), "초록": (30, 200, 30)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval-data")
    images = root / "photos"
    images.mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for i in range(9):
        word = list(COLOURS)[i % 3]
        noise = rng.normal(0, 25, (30, 40, 3))
        pixels = np.clip(np.asarray(COLOURS[word]) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.jpg")
        caps = [f"{word} 사진", f"{word} 자동차"] if i % 2 else [f"{word} 고양이"]
        lines.append(json.dumps({"image": f"{i}.jpg", "captions": caps}, ensure_ascii=False))
    captions = root / "captions.jsonl"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return captions, images


@pytest.mark.slow
def test_evaluate_equals_direct_encoding(dataset, tiny_checkpoint: Path) -> None:
    """`evaluate` encodes as koclip does, and scores as brute force over those embeddings."""
    from koclip import DEFAULT_PROMPT, load_encoder, open_image
    from train import evaluate
    from train.evaluate import encode_images, search_encoders

    captions, images = dataset
    records = read_captions(captions, images)
    encoder = load_encoder(str(tiny_checkpoint))
    direct_images = encoder.encode_images([open_image(r.path) for r in records])
    text, vision = search_encoders(str(tiny_checkpoint))
    np.testing.assert_allclose(encode_images(records, vision, workers=2), direct_images, atol=1e-5)
    caption_image = np.repeat(np.arange(len(records)), [len(r.captions) for r in records])
    texts = [c for r in records for c in r.captions]
    for prompt in (True, False):
        direct_texts = encoder.encode_texts(texts, prompt=DEFAULT_PROMPT if prompt else None)
        np.testing.assert_allclose(text.texts(texts, prompt=prompt), direct_texts, atol=1e-5)
        want = _reference(direct_images, direct_texts, caption_image, (1, 5, 10))
        got = evaluate(captions, images, str(tiny_checkpoint), prompt=prompt, workers=2)
        # The tiny random model's scores nearly tie, so float noise may swap one neighbour.
        for g, w, n in ((got.text_to_image, want[0], len(texts)), (got.image_to_text, want[1], 9)):
            assert set(g) == {1, 5, 10}
            assert all(abs(g[k] - w[k]) <= 1 / n + 1e-9 for k in g), (g, w)
        assert got.images == 9 and got.captions == len(texts) and got.prompt is prompt
        assert got.model == str(tiny_checkpoint.resolve())


def test_eval_cli_json_and_table(dataset, tiny_checkpoint: Path) -> None:
    from cli import main

    captions, images = dataset
    base = ["eval", str(captions), "--images", str(images), "--model", str(tiny_checkpoint)]
    result = CliRunner().invoke(main, [*base, "--json", "--no-prompt", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["prompt"] is False and data["images"] == 9
    assert set(data["image_to_text"]) == {"R@1", "R@5", "R@10"}
    assert 0 <= data["mean"] <= 1
    table = CliRunner().invoke(main, base)
    assert table.exit_code == 0, table.output
    assert "image → text" in table.output and "mean recall" in table.output


def test_eval_cli_errors(dataset, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from cli import main

    _, images = dataset
    broken = images.parent / "broken-images"
    broken.mkdir(exist_ok=True)
    (broken / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (broken / "1.jpg").write_bytes((images / "1.jpg").read_bytes())
    captions = tmp_path / "c.jsonl"
    captions.write_text(
        '{"image": "1.jpg", "captions": ["빨간 사진"]}\n{"image": "0.jpg", "captions": ["x"]}\n',
        encoding="utf-8",
    )
    args = ["eval", str(captions), "--images", str(broken), "--model", str(tiny_checkpoint)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "line 2" in result.output and "0.jpg" in result.output

    captions.write_text('{"image": "1.jpg", "captions": []}\n', encoding="utf-8")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "line 1" in result.output

    args[-1] = str(tmp_path / "no-model")
    captions.write_text('{"image": "1.jpg", "captions": ["x"]}\n', encoding="utf-8")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "no-model" in result.output
