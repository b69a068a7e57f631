"""Tiny random KoCLIP checkpoints in the hub's real on-disk formats, for tests and benches.

Every format `load_koclip` reads can be written here: the Flax `hybrid-clip` msgpack (CLIP or
ViT vision tower) and the transformers `vision-text-dual-encoder` layouts (safetensors with
transformers-5 flat keys or the classic nested ones; `pytorch_model.bin` when torch is there).
Each comes with a small Korean WordPiece vocabulary in klue/roberta-large's special-token order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from koclip.checkpoints.params import params_to_pt
from koclip.config import KoCLIPConfig
from koclip.tree import unflatten

FORMATS = ("msgpack", "safetensors", "safetensors-classic", "bin")

# klue/roberta-large's order: [CLS]=0, [PAD]=1, [SEP]=2, [UNK]=3, [MASK]=4.
SPECIAL_TOKENS = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
KOREAN_VOCAB = [
    "이것", "##은", "이", "##다", ".", "소파", "위", "##에", "고양이", "강아지", "##와", "주인",
    "자동차", "쳇바퀴", "##를", "달리는", "햄스터", "바닷가", "##에서", "노는", "바다", "노을",
    "사람", "숫자", "손", "##으로", "쓴", "하나", "둘", "셋", "넷", "다섯", "여섯", "일곱",
    "여덟", "아홉", "영", "빨간", "파란", "초록", "사진", "dog", "car", "cat", "red", "blue",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", ",", "!", "?",
]  # fmt: skip


def tiny_vocab() -> list[str]:
    return SPECIAL_TOKENS + KOREAN_VOCAB


def random_params(config: KoCLIPConfig, seed: int = 0, realistic: bool = False) -> dict[str, Any]:
    """Random parameters whose embeddings are well spread (distinct inputs, distinct vectors).

    Kernels have std 2/sqrt(fan_in) and embeddings std 1, so attention really mixes tokens and
    patches (a 0.02-std init gives every text the same embedding to 1e-4); LayerNorm scales and
    all biases are perturbed so any mix-up of parameter names shows in the parity tests.

    `realistic` gives the statistics quantisation is judged on: kernels of std 1/sqrt(fan_in)
    keep each layer's activation scale, as in trained towers (at 2/sqrt(fan_in) activations
    grow layer by layer), and the vision position embeddings are small beside the patch
    content (std 0.2), so photos spread over the embedding space instead of sharing one
    direction.
    """
    from koclip.checkpoints.cache import expected_shapes

    rng = np.random.default_rng(seed)
    gain = 1.0 if realistic else 2.0
    flat = {}
    for path, shape in sorted(expected_shapes(config).items()):
        leaf = path[-1]
        if leaf == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif path == ("logit_scale",):
            value = np.asarray(np.log(1 / 0.07) + 0.1 * rng.standard_normal())
        elif leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = gain * rng.standard_normal(shape) / np.sqrt(fan_in)
        elif leaf == "bias":
            value = 0.05 * rng.standard_normal(shape)
        else:  # embedding tables, class/cls tokens, position embeddings
            value = rng.standard_normal(shape)
            if (
                realistic
                and path[0] == "vision_model"
                and any(p.startswith("position_") for p in path)
            ):
                value = 0.2 * value
        flat[path] = np.asarray(value, dtype=np.float32)
    return unflatten(flat)


def write_tokenizer(directory: Path, vocab: list[str] | None = None) -> None:
    vocab = vocab or tiny_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": False,
        "model_max_length": 512,
        "cls_token": "[CLS]",
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def write_checkpoint(
    directory: str | Path,
    config: KoCLIPConfig,
    params: dict[str, Any],
    fmt: str = "msgpack",
    vocab: list[str] | None = None,
) -> Path:
    """Write `params` as a checkpoint directory in one of `FORMATS`."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, not {fmt!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "msgpack":
        from flax import serialization

        cfg = config.to_hybrid_clip_json()
        (directory / "flax_model.msgpack").write_bytes(serialization.to_bytes(params))
    else:
        cfg = config.to_dual_encoder_json()
        state = params_to_pt(params, layout="classic" if fmt == "safetensors-classic" else "flat")
        if fmt == "bin":
            import torch

            torch.save(
                {k: torch.from_numpy(v) for k, v in state.items()}, directory / "pytorch_model.bin"
            )
        else:
            from safetensors.numpy import save_file

            save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    write_tokenizer(directory, vocab)
    return directory


def build_tiny_checkpoint(
    directory: str | Path,
    *,
    vision: str = "clip",
    fmt: str = "msgpack",
    seed: int = 0,
    realistic: bool = False,
) -> Path:
    """A tiny random KoCLIP (embedding dim 16) that loads in well under a second."""
    config = KoCLIPConfig.tiny(vision=vision, vocab_size=len(tiny_vocab()))  # type: ignore[arg-type]
    params = random_params(config, seed, realistic)
    return write_checkpoint(directory, config, params, fmt=fmt)
