"""The named KoCLIP checkpoints: where each one's weights live and how its images are prepared."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NamedCheckpoint:
    """A released KoCLIP model: its hub repo, weight files in preference order, preprocessing."""

    name: str
    repo_id: str
    weight_files: tuple[str, ...]
    preprocess: str = "clip"  # KoCLIP's training transform, for both models (see preprocess.py)
    description: str = ""


CHECKPOINTS: dict[str, NamedCheckpoint] = {
    c.name: c
    for c in (
        NamedCheckpoint(
            "koclip-base",
            "koclip/koclip-base",
            ("flax_model.msgpack",),
            description="klue/roberta-large + openai/clip-vit-base-patch32 (Flax)",
        ),
        NamedCheckpoint(
            "koclip-large",
            "koclip/koclip-large",
            ("flax_model.msgpack",),
            description="klue/roberta-large + google/vit-large-patch16-224 (Flax)",
        ),
        NamedCheckpoint(
            "koclip-base-pt",
            "koclip/koclip-base-pt",
            ("model.safetensors", "pytorch_model.bin"),
            description="koclip-base as a transformers VisionTextDualEncoderModel (PyTorch)",
        ),
    )
}


# A tiny model with random weights, made locally on first use (koclip.testing): it lets a new
# user try every command without the real weights' download. Its results mean nothing.
TINY_RANDOM = "tiny-random"


def is_local(name_or_path: str | os.PathLike[str]) -> bool:
    return Path(name_or_path).expanduser().is_dir()


def model_id_for(name_or_path: str | os.PathLike[str]) -> str:
    """The id a library records: a hub name as given, or an absolute local path."""
    text = os.fspath(name_or_path)
    if text in CHECKPOINTS or text == TINY_RANDOM:
        return text
    p = Path(text).expanduser()
    if p.is_dir():
        return str(p.resolve())
    return text
