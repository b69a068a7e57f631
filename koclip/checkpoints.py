"""Named KoCLIP checkpoints, where their files live, and reading them into parameters.

Supported on disk (a hub snapshot or any local directory):

* `hybrid-clip` (the hub's `koclip/koclip-base`, `koclip/koclip-large`): `config.json` +
  `flax_model.msgpack`.
* `vision-text-dual-encoder` (`koclip/koclip-base-pt`, or saved by transformers):
  `config.json` + `model.safetensors` (single or sharded, classic or transformers-5 key
  layout) or `pytorch_model.bin` (needs torch, the optional `torch` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from koclip.config import KoCLIPConfig
from koclip.convert import params_from_flax, params_from_pt
from koclip.errors import CheckpointError, KoCLIPError
from koclip.safetensors_mmap import SafetensorsFormatError, open_mmap
from koclip.safetensors_mmap import save as save_safetensors
from koclip.tokenizer import TOKENIZER_FALLBACK
from koclip.tree import flatten, unflatten

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
WEIGHT_FILES = (
    "flax_model.msgpack",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)


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


def is_local(name_or_path: str | os.PathLike[str]) -> bool:
    return Path(name_or_path).expanduser().is_dir()


def model_id_for(name_or_path: str | os.PathLike[str]) -> str:
    """The id a library records: a hub name as given, or an absolute local path."""
    text = os.fspath(name_or_path)
    if text in CHECKPOINTS:
        return text
    p = Path(text).expanduser()
    if p.is_dir():
        return str(p.resolve())
    return text


def resolve(name_or_path: str | os.PathLike[str], cache_dir: str | None = None) -> CheckpointFiles:
    """Find a checkpoint's files (downloading a named one through huggingface_hub's cache)."""
    text = os.fspath(name_or_path)
    local = Path(text).expanduser()
    if local.is_dir():
        return _resolve_dir(str(local.resolve()), local.resolve())
    if text in CHECKPOINTS:
        return _resolve_hub(CHECKPOINTS[text], cache_dir)
    if local.exists():
        raise CheckpointError(f"{text}: a checkpoint must be a directory holding config.json")
    valid = ", ".join(CHECKPOINTS)
    raise CheckpointError(
        f"unknown model {text!r}: use one of {valid}, or a local checkpoint directory"
    )


def checkpoint_fingerprint(name_or_path: str | os.PathLike[str]) -> str:
    """A cheap id of a checkpoint's weights (no weights are loaded)."""
    return resolve(name_or_path).fingerprint


def _resolve_dir(model_id: str, directory: Path) -> CheckpointFiles:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: no config.json; is this a KoCLIP checkpoint?")
    data = _read_json(config_path)
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
        raise CheckpointError(
            f"the weights of {named.name} ({named.repo_id}) are not in the Hugging Face cache "
            f"and {why}; download them once with network access, or pass a local checkpoint "
            "directory"
        ) from None
    except CheckpointError:
        raise
    except Exception as exc:  # the hub client raises many types; one message for all
        raise CheckpointError(f"cannot fetch {named.repo_id}: {exc}") from None
    return _hub_files(named, config_path, weights)


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable config ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: config.json is not a JSON object")
    return data


def _fingerprint(config_path: Path, weights: Path) -> str:
    """Hash of config + weights' size and first/last MiB: cheap, and changes with the weights."""
    h = hashlib.sha256()
    h.update(config_path.read_bytes())
    files = [weights]
    if weights.name.endswith(".index.json"):
        files += [weights.parent / n for n in sorted(set(_shard_map(weights).values()))]
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:32]


# --- reading weights ---------------------------------------------------------------------------


def load_params(
    files: CheckpointFiles, towers: Iterable[str], cache_root: Path | None = None
) -> dict[str, Any]:
    """Read the parameters of the towers asked for, as float32 numpy arrays.

    The first load of a checkpoint converts each tower into our layout in a safetensors cache
    (keyed by the checkpoint's fingerprint); later loads memory-map just the towers asked for.
    """
    towers = tuple(sorted(set(towers)))
    if set(towers) - {"text", "vision"} or not towers:
        raise ValueError(f"towers must be a non-empty subset of ('text', 'vision'), not {towers}")
    cache = _converted_paths(files, cache_root)
    if cache is not None and all(cache[t].is_file() for t in towers):
        try:
            return _read_converted(cache, towers, files.config)
        except CheckpointError:
            pass  # a damaged cache entry is rebuilt from the checkpoint below
    params = _read_original(files, towers)
    if cache is not None:
        for tower in _towers_in(params):
            _write_converted(_select(params, (tower,)), cache[tower])
    return _select(params, towers)


def _read_original(files: CheckpointFiles, towers: tuple[str, ...]) -> dict[str, Any]:
    source = str(files.weights)
    name = files.weights.name
    if name == "flax_model.msgpack":
        # msgpack cannot be read in part: take both towers and cache both.
        return params_from_flax(
            _read_msgpack(files.weights), files.config, ("text", "vision"), source
        )
    if name.endswith(".safetensors") or name.endswith(".index.json"):
        return params_from_pt(_read_safetensors(files.weights), files.config, towers, source)
    if name == "pytorch_model.bin":
        return params_from_pt(_read_torch_bin(files.weights), files.config, towers, source)
    raise CheckpointError(f"{source}: unsupported weights file")


# The top-level parameter keys of each tower; `logit_scale` belongs to both.
TOWER_KEYS = {
    "text": ("text_model", "text_projection"),
    "vision": ("vision_model", "visual_projection"),
}


def _select(params: Mapping[str, Any], towers: Iterable[str]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if _tower_of(k) in (*towers, None)}


def _towers_in(params: Mapping[str, Any]) -> set[str]:
    return {t for k in params if (t := _tower_of(k)) is not None}


def _tower_of(top_key: str) -> str | None:
    return next((t for t, keys in TOWER_KEYS.items() if top_key in keys), None)


def loaded_towers(params: Mapping[str, Any]) -> frozenset[str]:
    """The towers whose parameters are all in `params`."""
    return frozenset(t for t, keys in TOWER_KEYS.items() if all(k in params for k in keys))


def tower_params(params: Mapping[str, Any], tower: str) -> dict[str, Any]:
    """One tower's top-level parameters; KoCLIPError if that tower was not loaded."""
    if tower not in loaded_towers(params):
        raise KoCLIPError(
            f"the {tower} tower was not loaded; pass towers=(..., {tower!r}) when loading"
        )
    return {k: params[k] for k in TOWER_KEYS[tower]}


def _read_msgpack(path: Path) -> dict[str, Any]:
    from flax import serialization

    try:
        data = path.read_bytes()
        tree = serialization.msgpack_restore(data)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # msgpack raises several unrelated types on damaged files
        raise CheckpointError(f"{path}: corrupt or truncated Flax msgpack ({exc})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: not a Flax parameter tree")
    # Some Flax checkpoints wrap the tree as {"params": ...}.
    if set(tree) == {"params"}:
        tree = tree["params"]
    return tree


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A single or sharded safetensors checkpoint as zero-copy views."""
    files = [path]
    if path.name.endswith(".index.json"):
        files = [path.parent / n for n in sorted(set(_shard_map(path).values()))]
    out: dict[str, np.ndarray] = {}
    for f in files:
        try:
            out.update(open_mmap(f))
        except (SafetensorsFormatError, OSError, ValueError) as exc:
            raise CheckpointError(f"{f}: corrupt or unreadable safetensors ({exc})") from None
    return out


def _shard_map(index_path: Path) -> dict[str, str]:
    data = _read_json(index_path)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: no weight_map")
    return weight_map


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path}: reading pytorch_model.bin needs torch; install it with "
            "`pip install 'koclip-search[torch]'` or convert the checkpoint to safetensors"
        ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or unreadable PyTorch checkpoint ({exc})") from None
    return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


# --- the converted cache: msgpack is read once, then one tower is memory-mapped ------------------


def default_cache_root() -> Path:
    base = os.environ.get("KOCLIP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "koclip-search"
    )
    return Path(base)


def _converted_paths(files: CheckpointFiles, cache_root: Path | None) -> dict[str, Path] | None:
    if os.environ.get("KOCLIP_NO_CONVERTED_CACHE"):
        return None
    root = (cache_root if cache_root is not None else default_cache_root()) / "converted"
    return {t: root / f"{files.fingerprint}.{t}.safetensors" for t in ("text", "vision")}


def _read_converted(
    cache: dict[str, Path], towers: tuple[str, ...], config: KoCLIPConfig
) -> dict[str, Any]:
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for tower in towers:
        try:
            tensors = open_mmap(cache[tower])
        except (SafetensorsFormatError, OSError, ValueError) as exc:
            raise CheckpointError(f"{cache[tower]}: damaged conversion cache ({exc})") from None
        flat.update({tuple(k.split("/")): v for k, v in tensors.items()})
    return params_from_flax(unflatten(flat), config, towers, str(cache[towers[0]]))


def _write_converted(params: dict[str, Any], path: Path) -> None:
    """Best effort, atomic: a cache that cannot be written only costs speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        flat = {"/".join(k): np.asarray(v, np.float32) for k, v in flatten(params).items()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_safetensors(flat, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass


# --- tokenizer --------------------------------------------------------------------------------


def load_tokenizer(files: CheckpointFiles | None, cache_dir: str | None = None) -> Any:
    """klue/roberta-large's WordPiece tokenizer: from the checkpoint dir, else from the hub cache."""
    from transformers import AutoTokenizer

    source: str = TOKENIZER_FALLBACK
    if files is not None and any((files.directory / f).is_file() for f in TOKENIZER_FILES):
        source = str(files.directory)
    try:
        # do_lower_case=True would NFD-strip Hangul into [UNK]: always off. The checkpoint's
        # config.json describes the dual encoder, not the tokenizer: silence transformers'
        # warning about that model_type.
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(source, do_lower_case=False, cache_dir=cache_dir)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot load the tokenizer from {source}: {exc}. KoCLIP uses klue/roberta-large's "
            "tokenizer; put its vocab.txt beside the checkpoint or in the Hugging Face cache"
        ) from None


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


# --- writing ---------------------------------------------------------------------------------


def save_checkpoint(
    directory: str | os.PathLike[str],
    config: KoCLIPConfig,
    params: Mapping[str, Any],
    tokenizer: Any | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a `hybrid-clip` checkpoint (config.json + flax_model.msgpack + tokenizer) atomically.

    Everything is written into a sibling temp directory, fsynced, then renamed over `directory`,
    so a reader (or a crash) sees either the old checkpoint or the new one, never a mix.
    """
    from flax import serialization

    target = Path(directory).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        flat_params = {k: np.asarray(v, dtype=np.float32) for k, v in flatten(params).items()}
        blob = serialization.to_bytes(unflatten(flat_params))
        _write_synced(tmp / "flax_model.msgpack", blob)
        cfg = json.dumps(config.to_hybrid_clip_json(), indent=2, ensure_ascii=False)
        _write_synced(tmp / "config.json", cfg.encode("utf-8"))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, data in (extra_files or {}).items():
            _write_synced(tmp / name, data)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write checkpoint {target}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
