"""Getting a named checkpoint onto this machine: into the Hugging Face cache, or into a folder
of its own that can be copied to a machine without network and used there with `--model DIR`.

A folder made here holds everything a run needs: `config.json`, the weights file and the
tokenizer's vocabulary (KoCLIP's hub repos do not carry one; it is klue/roberta-large's).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from koclip.checkpoints.hub import check_hub_reachable, resolve
from koclip.checkpoints.registry import CHECKPOINTS, NamedCheckpoint
from koclip.errors import CheckpointError
from koclip.tokenizer import TOKENIZER_FALLBACK

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")


@dataclass(frozen=True)
class Download:
    """What a download needs: (repo, file, size in bytes or None when unknown) for each file
    not yet in the cache."""

    name: str
    missing: tuple[tuple[str, str, int | None], ...]

    @property
    def total_bytes(self) -> int | None:
        sizes = [size for _, _, size in self.missing]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s)


def named(name: str) -> NamedCheckpoint:
    if name not in CHECKPOINTS:
        valid = ", ".join(CHECKPOINTS)
        raise CheckpointError(f"unknown model {name!r}: downloadable models are {valid}")
    return CHECKPOINTS[name]


def plan_download(name: str, cache_dir: str | None = None) -> Download:
    """The files of `name` (and of its tokenizer) that are not in the cache, with their sizes
    as the hub reports them. Asks the hub only when something is missing."""
    checkpoint = named(name)
    wanted = [(checkpoint.repo_id, "config.json"), (checkpoint.repo_id, checkpoint.weight_files[0])]
    if _cached_weights(checkpoint, cache_dir) is not None:
        wanted = []
    if _cached(TOKENIZER_FALLBACK, TOKENIZER_FILES[0], cache_dir) is None:
        wanted.append((TOKENIZER_FALLBACK, TOKENIZER_FILES[0]))
    if not wanted:
        return Download(name, ())
    check_hub_reachable(checkpoint)
    return Download(name, tuple((repo, f, _remote_size(repo, f)) for repo, f in wanted))


def download(
    name: str,
    to: Path | None = None,
    *,
    cache_dir: str | None = None,
    on_file: Callable[[str], None] | None = None,
) -> Path:
    """Fetch `name` into the cache (what is already there is not fetched again) and, with
    `to`, copy it into that folder as a self-contained checkpoint. Returns the folder to pass
    as `--model` (the cache's snapshot folder without `to`).

    The hub client draws its own progress bars on stderr; `on_file` is told each file first."""
    from huggingface_hub import hf_hub_download

    checkpoint = named(name)
    plan = plan_download(name, cache_dir)
    try:
        for repo, filename, _ in plan.missing:
            if on_file:
                on_file(f"{repo}/{filename}")
            hf_hub_download(repo, filename, cache_dir=cache_dir)
    except CheckpointError:
        raise
    except Exception as exc:  # the hub client raises many types; one message for all
        raise CheckpointError(f"cannot download {checkpoint.repo_id}: {exc}") from None
    files = resolve(name, cache_dir=cache_dir)
    vocab = _cached(TOKENIZER_FALLBACK, TOKENIZER_FILES[0], cache_dir)
    if to is None:
        return files.directory
    if vocab is None:  # pragma: no cover - downloaded above
        raise CheckpointError(f"{TOKENIZER_FALLBACK}'s vocabulary is not in the cache")
    return _copy_out(
        Path(to), [files.directory / "config.json", files.weights, Path(vocab)], checkpoint
    )


def _copy_out(to: Path, sources: list[Path], checkpoint: NamedCheckpoint) -> Path:
    """The files into `to`, whole or not at all: copied into a sibling scratch folder, then
    renamed into place (an existing `to` must be empty, or hold this same checkpoint)."""
    to = to.expanduser().resolve()
    if to.exists() and any(to.iterdir()):
        if (to / "config.json").is_file() and all((to / s.name).is_file() for s in sources):
            return to  # already there (a second run)
        raise CheckpointError(f"{to} is not empty; give a new folder for {checkpoint.name}")
    to.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{to.name}.", dir=to.parent))
    try:
        for source in sources:
            shutil.copyfile(source, scratch / source.name)  # through the cache's links
            with open(scratch / source.name, "rb") as fh:
                os.fsync(fh.fileno())
        if to.exists():
            to.rmdir()
        os.replace(scratch, to)
    except OSError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise CheckpointError(f"cannot write {to}: {exc.strerror or exc}") from None
    return to


def _cached_weights(checkpoint: NamedCheckpoint, cache_dir: str | None) -> str | None:
    if _cached(checkpoint.repo_id, "config.json", cache_dir) is None:
        return None
    for filename in checkpoint.weight_files:
        found = _cached(checkpoint.repo_id, filename, cache_dir)
        if found is not None:
            return found
    return None


def _cached(repo: str, filename: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def _remote_size(repo: str, filename: str) -> int | None:
    """The file's size as the hub lists it; None when the hub does not say."""
    try:
        from huggingface_hub import HfApi

        (info,) = HfApi().get_paths_info(repo, [filename])
        return getattr(info, "size", None)
    except Exception:  # noqa: BLE001 - a size is only shown, never needed
        return None
