"""klue/roberta-large's WordPiece tokenizer, KoCLIP's only one, without importing transformers.

Importing transformers costs seconds of a one-shot search's cold start, so the processor and
the encoders build the same pipeline directly on the `tokenizers` library (which transformers'
fast tokenizers wrap): BERT normaliser with lower-casing *and accent stripping off* (on, they
decompose Hangul into jamo and then [UNK]), BERT pre-tokeniser, WordPiece, `[CLS] … [SEP]`.
tests/test_tokenizer.py proves the ids equal to transformers' `AutoTokenizer`'s.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from koclip.errors import CheckpointError

TOKENIZER_FALLBACK = "klue/roberta-large"
# What a checkpoint directory may carry of its tokenizer; copied into trained checkpoints.
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


class WordPieceTokenizer:
    """Texts -> lists of ids, `[CLS] … [SEP]`, truncated to `max_length`."""

    def __init__(
        self,
        vocab: dict[str, int],
        unk: str = "[UNK]",
        pad: str = "[PAD]",
        source: Path | None = None,
    ) -> None:
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

        for token in ("[CLS]", "[SEP]", unk, pad):
            if token not in vocab:
                raise CheckpointError(f"tokenizer vocabulary lacks {token}")
        tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
        )
        self._tok = tok
        self.vocab = vocab
        self.source = source  # the directory the files came from, copied by `save`
        self.pad_token_id = vocab[pad]
        self.unk_token_id = vocab[unk]
        self.cls_token_id = cls

    @classmethod
    def from_vocab_file(cls, path: Path) -> WordPieceTokenizer:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable vocabulary ({exc})") from None
        vocab: dict[str, int] = {}
        for i, token in enumerate(lines):
            vocab[token] = i  # a repeated token keeps its last line, as transformers reads it
        return cls(vocab, source=path.parent)

    @classmethod
    def from_tokenizer_json(cls, path: Path) -> WordPieceTokenizer:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            vocab = data["model"]["vocab"]
            kind = data["model"]["type"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable tokenizer.json ({exc})") from None
        if kind != "WordPiece" or not isinstance(vocab, dict):
            raise CheckpointError(f"{path}: expected a WordPiece tokenizer, found {kind!r}")
        return cls(vocab, source=path.parent)

    def batch_ids(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        self._tok.enable_truncation(max_length)
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._tok.id_to_token(i) for i in ids]

    def pad(
        self, ids_list: Sequence[Sequence[int]], length: int | None = None, rows: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`pad_ids` with this vocabulary's [PAD]."""
        return pad_ids(ids_list, self.pad_token_id, length, rows)

    def save(self, directory: Path) -> None:
        """Put this tokenizer's files in `directory`: copied from its source, else a vocab.txt."""
        copied = False
        for name in TOKENIZER_FILES if self.source is not None else ():
            if (self.source / name).is_file():
                shutil.copyfile(self.source / name, directory / name)
                copied = True
        if not copied:
            by_id = sorted(self.vocab, key=self.vocab.__getitem__)
            (directory / "vocab.txt").write_text("\n".join(by_id) + "\n", encoding="utf-8")


def pad_ids(
    ids_list: Sequence[Sequence[int]],
    pad_id: int,
    length: int | None = None,
    rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """int32 `(ids, attention_mask)` of `rows` x `length`, by default just big enough.

    Longer rows are cut to `length`. Rows past `ids_list` (padding a batch up to a compiled
    size) attend to their first token, so no softmax row is empty.
    """
    length = length or max(len(x) for x in ids_list)
    rows = rows or len(ids_list)
    ids = np.full((rows, length), pad_id, dtype=np.int32)
    mask = np.zeros((rows, length), dtype=np.int32)
    for i, x in enumerate(ids_list):
        x = x[:length]
        ids[i, : len(x)] = x
        mask[i, : len(x)] = 1
    mask[len(ids_list) :, 0] = 1
    return ids, mask


def load_wordpiece(directory: Path | None, cache_dir: str | None = None) -> WordPieceTokenizer:
    """From the checkpoint directory if it has the files, else klue/roberta-large's cached files."""
    if directory is not None:
        found = _from_dir(directory)
        if found is not None:
            return found
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for filename in ("vocab.txt", "tokenizer.json"):
        try:
            path = Path(hf_hub_download(TOKENIZER_FALLBACK, filename, cache_dir=cache_dir))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue
        except Exception as exc:  # the hub client raises many types; one message for all
            raise CheckpointError(f"cannot fetch {TOKENIZER_FALLBACK}'s tokenizer: {exc}") from None
        return _from_dir(path.parent) or WordPieceTokenizer.from_vocab_file(path)
    raise CheckpointError(
        f"no tokenizer beside the checkpoint and {TOKENIZER_FALLBACK}'s is not in the Hugging Face "
        "cache; put its vocab.txt beside the checkpoint or download it once"
    )


def _from_dir(directory: Path) -> WordPieceTokenizer | None:
    if (directory / "vocab.txt").is_file():
        return WordPieceTokenizer.from_vocab_file(directory / "vocab.txt")
    if (directory / "tokenizer.json").is_file():
        return WordPieceTokenizer.from_tokenizer_json(directory / "tokenizer.json")
    return None
