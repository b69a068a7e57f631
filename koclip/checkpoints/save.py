"""Writing a trained checkpoint atomically: config, weights and tokenizer, or nothing."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from koclip.config import KoCLIPConfig
from koclip.errors import CheckpointError
from koclip.files import fsync_dir, write_synced
from koclip.tokenizer import WordPieceTokenizer
from koclip.tree import flatten, unflatten


def save_checkpoint(
    directory: str | os.PathLike[str],
    config: KoCLIPConfig,
    params: Mapping[str, Any],
    tokenizer: WordPieceTokenizer | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a `hybrid-clip` checkpoint (config.json + flax_model.msgpack + tokenizer) atomically.

    Everything is written into a sibling temp directory, fsynced, then renamed over `directory`,
    so a reader (or a crash) sees either the old checkpoint or the new one, never a mix. The
    tokenizer's files are copied from the checkpoint it was read from.
    """
    from flax import serialization

    target = Path(directory).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        flat_params = {k: np.asarray(v, dtype=np.float32) for k, v in flatten(params).items()}
        blob = serialization.to_bytes(unflatten(flat_params))
        write_synced(tmp / "flax_model.msgpack", blob)
        cfg = json.dumps(config.to_hybrid_clip_json(), indent=2, ensure_ascii=False)
        write_synced(tmp / "config.json", cfg.encode("utf-8"))
        if tokenizer is not None:
            tokenizer.save(tmp)
        for name, data in (extra_files or {}).items():
            write_synced(tmp / name, data)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {target}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
