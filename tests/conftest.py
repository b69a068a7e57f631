"""Shared fixtures: offline, a private cache, and tiny KoCLIP checkpoints in every hub format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing at test time may reach the hub; set before huggingface_hub is imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Indexing runs in fp32 (the reference) unless a test asks for bf16 or int8: tests compare vectors
# across encoders at 1e-5, and `auto` would pick bf16 where the CPU has it.
os.environ.setdefault("KOCLIP_PRECISION", "fp32")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Converted-weights cache and JAX compilation cache under a temp dir, not ~/.cache."""
    os.environ["KOCLIP_CACHE_DIR"] = str(tmp_path_factory.mktemp("koclip-cache"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random koclip-base-shaped checkpoint (Flax msgpack, CLIP vision tower, dim 16)."""
    from koclip.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny-koclip"), vision="clip", fmt="msgpack"
    )


@pytest.fixture(scope="session")
def tiny_checkpoint_other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny checkpoint with different weights, for model-mismatch tests."""
    from koclip.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(
        tmp_path_factory.mktemp("tiny-koclip-other"), vision="clip", fmt="safetensors", seed=1
    )
