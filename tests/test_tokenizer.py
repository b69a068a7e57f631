"""The encoders' transformers-free WordPiece pipeline gives exactly AutoTokenizer's ids."""

from __future__ import annotations

import json

import pytest

from koclip.errors import CheckpointError
from koclip.tokenizer import WordPieceTokenizer, load_wordpiece

TEXTS = [
    "소파 위에 고양이",
    "이것은 바닷가에서 노는 강아지 이다.",
    "\u1100\u1161\u11bc\u110b\u1161\u110c\u1175",  # NFD 강아지: jamo are not in the vocab
    "dog, car! red?",
    "DOG Car",  # no lower-casing: unknown upper-case words stay [UNK]
    "  숫자 7 손으로 쓴  ",
    "빨간자동차와파란자동차",
    "東京 café ñ",
    "",
    "고양이 " * 100,  # truncation
]


def reference_tokenizer(directory):
    """transformers' tokenizer for a checkpoint dir: the reference ours is held to."""
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # config.json describes the dual encoder, not the tokenizer
    # do_lower_case=True would NFD-strip Hangul into [UNK]: KoCLIP always has it off.
    return AutoTokenizer.from_pretrained(str(directory), do_lower_case=False)


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_autotokenizer(tiny_checkpoint, text):
    reference = reference_tokenizer(tiny_checkpoint)
    ours = load_wordpiece(tiny_checkpoint)
    expected = reference([text], truncation=True, max_length=40)["input_ids"][0]
    assert ours.batch_ids([text], 40)[0] == expected


def test_tokenizer_json_only(tmp_path, tiny_checkpoint):
    reference = reference_tokenizer(tiny_checkpoint)
    reference.save_pretrained(str(tmp_path))
    (tmp_path / "vocab.txt").unlink(missing_ok=True)
    assert (tmp_path / "tokenizer.json").is_file()
    ours = load_wordpiece(tmp_path)
    assert ours.batch_ids(TEXTS[:3], 40) == reference(TEXTS[:3])["input_ids"]


def test_bad_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}}}))
    with pytest.raises(CheckpointError, match="WordPiece"):
        load_wordpiece(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(CheckpointError, match=r"lacks \[CLS\]"):
        load_wordpiece(tmp_path)
    with pytest.raises(CheckpointError, match="klue/roberta-large"):
        load_wordpiece(tmp_path / "nothing", cache_dir=str(tmp_path / "empty"))


def test_pad_and_unk_ids(tiny_checkpoint):
    tok = load_wordpiece(tiny_checkpoint)
    assert tok.pad_token_id == 1 and tok.unk_token_id == 3
    assert isinstance(tok, WordPieceTokenizer)
