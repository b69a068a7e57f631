"""Finding a checkpoint's files (a local directory or the Hugging Face cache) and their fingerprint.

Supported on disk (a hub snapshot or any local directory):

* `hybrid-clip` (the hub's `koclip/koclip-base`, `koclip/koclip-large`): `config.json` +
  `flax_model.msgpack`.
* `vision-text-dual-encoder` (`koclip/koclip-base-pt`, or saved by transformers):
  `config.json` + `model.safetensors` (single or sharded, classic or transformers-5 key
  layout) or `pytorch_model.bin` (needs torch, the optional `torch` extra).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from koclip.checkpoints.registry import CHECKPOINTS, TINY_RANDOM, NamedCheckpoint
from koclip.config import KoCLIPConfig
from koclip.errors import CheckpointError, ModelUnavailableError


@dataclass(frozen=True)
class CheckpointFiles:
    """A resolved checkpoint: the directory, its config and the weights file to read."""

    model_id: str
    directory: Path
    config: KoCLIPConfig
    model_type: str
    weights: Path

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.directory / "config.json", self.weights)


def resolve(name_or_path: str | os.PathLike[str], cache_dir: str | None = None) -> CheckpointFiles:
    """Find a checkpoint's files (downloading a named one through huggingface_hub's cache)."""
    text = os.fspath(name_or_path)
    local = Path(text).expanduser()
    if local.is_dir():
        return _resolve_dir(str(local.resolve()), local.resolve())
    if text in CHECKPOINTS:
        return _resolve_hub(CHECKPOINTS[text], cache_dir)
    if text == TINY_RANDOM:
        return _resolve_dir(TINY_RANDOM, _tiny_random())
    if local.exists():
        raise CheckpointError(f"{text}: a checkpoint must be a directory holding config.json")
    valid = ", ".join([*CHECKPOINTS, TINY_RANDOM])
    raise CheckpointError(
        f"unknown model {text!r}: use one of {valid}, or a local checkpoint directory"
    )


def _tiny_random() -> Path:
    """The tiny random model's folder, made on first use in the cache (no download): for
    trying the tool, never for finding photos."""
    import shutil
    import tempfile

    from koclip.checkpoints.cache import default_cache_root

    folder = default_cache_root() / TINY_RANDOM
    if not (folder / "config.json").is_file():
        from koclip.testing import build_tiny_checkpoint

        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{TINY_RANDOM}.", dir=folder.parent)
        try:
            build_tiny_checkpoint(tmp, seed=0)
            shutil.rmtree(folder, ignore_errors=True)  # a half-made one from before
            os.replace(tmp, folder)  # whole or not at all, for a concurrent first use too
        except OSError:
            if not (folder / "config.json").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def checkpoint_fingerprint(name_or_path: str | os.PathLike[str]) -> str:
    """A cheap id of a checkpoint's weights (no weights are loaded)."""
    return resolve(name_or_path).fingerprint


def shard_files(weights: Path) -> list[Path]:
    """The files holding a checkpoint's tensors: the shards of an index, or the file itself."""
    if not weights.name.endswith(".index.json"):
        return [weights]
    weight_map = read_json(weights).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{weights}: no weight_map")
    return [weights.parent / n for n in sorted(set(weight_map.values()))]


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable config ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: config.json is not a JSON object")
    return data


def _resolve_dir(model_id: str, directory: Path) -> CheckpointFiles:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no config.json; is this a KoCLIP checkpoint?")
    data = read_json(config_path)
    try:
        config = KoCLIPConfig.from_json(data)
    except ValueError as exc:
        raise CheckpointError(f"{config_path}: {exc}") from None
    model_type = data["model_type"]
    order = (
        ("flax_model.msgpack",)
        if model_type == "hybrid-clip"
        else ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )
    for name in order:
        if (directory / name).is_file():
            return CheckpointFiles(model_id, directory, config, model_type, directory / name)
    raise CheckpointError(
        f"{directory}: no weights file for a {model_type!r} checkpoint (looked for {', '.join(order)})"
    )


def _resolve_hub(named: NamedCheckpoint, cache_dir: str | None) -> CheckpointFiles:
    """Files of a named checkpoint: from the local hub cache when there, else downloaded.

    The cache is tried first without any network call: a library's vectors are tied to the
    weights' fingerprint anyway, and a one-shot search must not wait on the hub (or on its
    retries when offline).
    """
    cached = _from_hub_cache(named, cache_dir)
    if cached is not None:
        return cached
    check_hub_reachable(named)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(named.repo_id, filename, cache_dir=cache_dir))

    try:
        config_path = fetch("config.json")
        weights = None
        for filename in named.weight_files:
            try:
                weights = fetch(filename)
                break
            except EntryNotFoundError:
                continue
        if weights is None:
            raise CheckpointError(f"{named.repo_id} has none of {', '.join(named.weight_files)}")
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        why = "downloads are off (HF_HUB_OFFLINE)" if offline else "the hub cannot be reached"
        raise ModelUnavailableError(
            f"the weights of {named.name} ({named.repo_id}) are not in the Hugging Face cache "
            f"and {why}"
        ) from None
    except CheckpointError:
        raise
    except Exception as exc:  # the hub client raises many types; one message for all
        raise CheckpointError(f"cannot fetch {named.repo_id}: {exc}") from None
    return _hub_files(named, config_path, weights)


# How long the one connection that tells whether the hub answers may take, before the download.
HUB_CHECK_SECONDS = 3.0


def check_hub_reachable(named: NamedCheckpoint) -> None:
    """Fail at once, with the line that says what to do, when the hub cannot be reached.

    Without this, the hub client spends half a minute in retries (each with its own warning)
    before its error. One bounded TCP connection to the endpoint (HF_ENDPOINT, else the hub)
    tells; HF_HUB_OFFLINE skips even that."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    # As huggingface_hub reads it, but now (its constant is read once, at its import).
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if flag.strip().upper() in ("1", "ON", "YES", "TRUE"):
        why = "downloads are off (HF_HUB_OFFLINE)"
    else:
        url = urlsplit(constants.ENDPOINT)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname or "", port), timeout=HUB_CHECK_SECONDS).close()
            return
        except OSError as exc:
            why = f"the hub cannot be reached ({url.hostname}:{port}: {exc.strerror or exc})"
    raise ModelUnavailableError(
        f"the weights of {named.name} ({named.repo_id}) are not in the Hugging Face cache and {why}"
    )


def _from_hub_cache(named: NamedCheckpoint, cache_dir: str | None) -> CheckpointFiles | None:
    from huggingface_hub import try_to_load_from_cache

    config_path = try_to_load_from_cache(named.repo_id, "config.json", cache_dir=cache_dir)
    if not isinstance(config_path, str):
        return None
    for filename in named.weight_files:
        weights = try_to_load_from_cache(named.repo_id, filename, cache_dir=cache_dir)
        if isinstance(weights, str):
            return _hub_files(named, Path(config_path), Path(weights))
    return None


def _hub_files(named: NamedCheckpoint, config_path: Path, weights: Path) -> CheckpointFiles:
    resolved = _resolve_dir(named.name, config_path.parent)
    # A snapshot may hold several weight files; keep the one asked for.
    return CheckpointFiles(
        named.name, config_path.parent, resolved.config, resolved.model_type, weights
    )


def _fingerprint(config_path: Path, weights: Path) -> str:
    """Hash of config + weights' size and first/last MiB: cheap, and changes with the weights."""
    h = hashlib.sha256()
    h.update(config_path.read_bytes())
    files = [weights] + (shard_files(weights) if weights.name.endswith(".index.json") else [])
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:32]
