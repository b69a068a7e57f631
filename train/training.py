"""Fine-tuning a KoCLIP checkpoint on captioned images: data, epochs, checkpoints, resuming.

The math is `koclip.train`; this module feeds it. Each epoch visits every training image once
with one of its captions (drawn with the run's seed), in batches of a fixed size (the last partial
batch is dropped, so XLA compiles one program). After each epoch (and every `save_every`
steps) the out folder is replaced atomically by a checkpoint `load_koclip` / `load_encoder`
read, plus `training.json` (options, progress, history) and, until the run is finished,
`train_state.msgpack` (AdamW's moments): an interrupted run resumes from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from koclip.errors import KoclipSearchError
from train.captions import CaptionRecord, read_captions
from train.evaluate import MemoryEncoders, Recall, evaluate_records, iter_pixel_batches

META_FILE = "training.json"
STATE_FILE = "train_state.msgpack"
META_FORMAT = 1
FREEZE_CHOICES = ("text", "vision")
# KoCLIP's captions (MSCOCO-ko) are short; 64 tokens fit nearly all of them.
DEFAULT_MAX_LENGTH = 64


class TrainError(KoclipSearchError):
    """Training cannot start or go on; the message says why and what to do."""

    code = "train_error"


class TrainDataError(TrainError):
    """The data cannot be trained on with the options given (too few images for a batch)."""

    exit_code = 2
    http_status = 400


@dataclass(frozen=True)
class TrainOptions:
    """Knobs of `train` (the CLI flags)."""

    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.1
    warmup: float = 0.1  # below 1: a fraction of all steps; otherwise a step count
    max_length: int | None = None  # tokens every caption is padded (or cut) to; None: 64 or fewer
    freeze: str | None = None  # "text" or "vision": that tower keeps its weights
    val_split: float = 0.0  # fraction of images held out and evaluated after each epoch
    seed: int = 0
    prompt: bool = False  # wrap captions in koclip's prompt template, as search does by default
    workers: int | None = None  # image decoding threads (default: one per CPU)
    save_every: int = 0  # also checkpoint every this many steps (0: only after each epoch)
    resume: bool = True  # go on from the out folder's last checkpoint, if it has one

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (the other images are the negatives)")
        if not self.learning_rate > 0:
            raise ValueError("learning_rate must be positive")
        if self.weight_decay < 0 or self.warmup < 0 or self.save_every < 0:
            raise ValueError("weight_decay, warmup and save_every must be >= 0")
        if self.max_length is not None and self.max_length < 3:
            raise ValueError("max_length must be at least 3 ([CLS] text [SEP])")
        if self.freeze not in (None, *FREEZE_CHOICES):
            raise ValueError(f"freeze must be one of {FREEZE_CHOICES}, not {self.freeze!r}")
        if not 0 <= self.val_split < 1:
            raise ValueError("val_split must be in [0, 1)")

    def schedule(self) -> dict[str, Any]:
        """The options a resumed run must share with the run it resumes."""
        keep = (
            "epochs", "batch_size", "learning_rate", "weight_decay", "warmup", "max_length",
            "freeze", "val_split", "seed", "prompt",
        )  # fmt: skip
        return {k: getattr(self, k) for k in keep}


@dataclass(frozen=True)
class TrainProgress:
    """What a progress callback is told after every step and at the end of every epoch."""

    epoch: int  # 1-based
    epochs: int
    step: int  # steps done in all
    total_steps: int
    loss: float  # mean over the epoch so far
    images_per_sec: float  # since the first step of this run (which compiles) ended
    seconds_left: float | None = None
    epoch_done: bool = False  # the last call of an epoch, after validation and the checkpoint
    validation: Recall | None = None  # with epoch_done, when there is a validation split


@dataclass(frozen=True)
class EpochResult:
    """One finished epoch."""

    epoch: int
    loss: float
    validation: dict[str, Any] | None = None


@dataclass(frozen=True)
class TrainSummary:
    """What `train` did."""

    out: Path
    base_model: str
    steps: int
    total_steps: int
    steps_this_run: int
    resumed_from_step: int
    batch_size: int
    train_images: int
    val_images: int
    seconds: float
    images_per_sec: float
    history: tuple[EpochResult, ...] = field(default_factory=tuple)

    @property
    def already_finished(self) -> bool:
        return self.steps_this_run == 0 and self.steps == self.total_steps

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        out = dataclasses.asdict(self)
        out["out"] = str(self.out)
        out["history"] = [dataclasses.asdict(e) for e in self.history]
        out["already_finished"] = self.already_finished
        return out

    def to_text(self) -> str:
        """A few lines for a terminal."""
        if self.already_finished:
            return f"{self.out} already holds the finished run ({self.steps} steps); nothing to do"
        lines = []
        for e in self.history:
            line = f"epoch {e.epoch}: loss {e.loss:.4f}"
            if e.validation:
                line += f", validation mean recall {100 * e.validation['mean']:.1f}"
            lines.append(line)
        resumed = f", resumed at step {self.resumed_from_step}" if self.resumed_from_step else ""
        # The first step of a run compiles and is not timed: one step alone has no rate.
        rate = f" ({self.images_per_sec:.1f} img/s)" if self.images_per_sec > 0 else ""
        lines.append(
            f"{self.steps_this_run} steps of {self.batch_size} in {self.seconds:.1f} s"
            f"{rate}{resumed}; checkpoint: {self.out}"
        )
        return "\n".join(lines)


ProgressCallback = Callable[[TrainProgress], None]


# --- data ---------------------------------------------------------------------------------------


def split_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) record indices, sorted; a seeded image-level split."""
    n_val = 0 if fraction <= 0 else max(1, round(n * fraction))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def epoch_plan(
    records: Sequence[CaptionRecord], train_idx: np.ndarray, seed: int, epoch: int
) -> tuple[np.ndarray, list[str]]:
    """The epoch's image order and the caption drawn for each, from (seed, epoch) alone."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(train_idx)
    captions = [records[i].captions[rng.integers(len(records[i].captions))] for i in order]
    return order, captions


class BatchMaker:
    """Turns (records, captions) into fixed-shape model batches: pixels and padded token ids.

    `tokenizer` is koclip's `WordPieceTokenizer`, the one search encodes queries with.
    """

    def __init__(
        self, tokenizer: Any, image_size: int, max_length: int, prompt: bool, workers: int | None
    ) -> None:
        from koclip.images.preprocess import DEFAULT_PROMPT

        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_length = max_length
        self.template = DEFAULT_PROMPT if prompt else None
        self.workers = workers

    def tokens(self, captions: Sequence[str]) -> dict[str, np.ndarray]:
        """Captions (NFC, prompt) -> input_ids, attention_mask, token_type_ids, position_ids."""
        from koclip.images.preprocess import apply_prompt
        from koclip.train import text_batch

        texts = [apply_prompt(c, self.template) for c in captions]
        ids = self.tokenizer.batch_ids(texts, self.max_length)
        return text_batch(ids, self.max_length, self.tokenizer.pad_token_id)

    def batches(
        self, records: Sequence[CaptionRecord], captions: Sequence[str], batch_size: int
    ) -> Iterator[dict[str, np.ndarray]]:
        """Full batches in order (images decoded ahead by a thread pool)."""
        pixels = iter_pixel_batches(records, self.image_size, batch_size, self.workers)
        for start, pix in zip(range(0, len(records), batch_size), pixels, strict=True):
            yield {"pixel_values": pix, **self.tokens(captions[start : start + batch_size])}


def check_batch(batch_size: int, n_train: int, n_val: int = 0) -> None:
    """TrainDataError unless the training images fill at least one batch (the last partial
    batch is dropped, so a larger batch would train on nothing)."""
    held = f" ({n_val} of {n_train + n_val} held out by --val-split)" if n_val else ""
    if n_train < 2:
        raise TrainDataError(
            f"{n_train} training image(s){held}: at least 2 are needed (each is the others' "
            "negative)"
        )
    if batch_size > n_train:
        raise TrainDataError(
            f"--batch-size {batch_size} is larger than the {n_train} training images{held}: "
            f"a step needs a full batch; pass --batch-size {n_train} or less, or add images"
        )


def data_digest(records: Sequence[CaptionRecord]) -> str:
    """A short hash of the records (images and captions) a run trains on."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps([r.image, r.captions], ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:16]


# --- state on disk ------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything a run carries from step to step (and writes with each checkpoint)."""

    config: Any
    params: Any
    opt_state: Any
    tokenizer: Any  # koclip's WordPieceTokenizer: ids for training; its files go beside checkpoints
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def read_meta(out: Path) -> dict[str, Any] | None:
    """The out folder's training.json; None for a new or empty folder; TrainError for any other."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise TrainError(f"{out} is not a folder")
    meta_path = out / META_FILE
    if not meta_path.is_file():
        if any(out.iterdir()):
            raise TrainError(
                f"{out} is not empty and holds no koclip-search training run; choose a new --out"
            )
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainError(f"{meta_path}: unreadable ({exc}); start over with --no-resume") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise TrainError(f"{meta_path}: not a training record this version understands")
    return meta


def _mismatches(meta: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    out = []
    for key, value in expected.items():
        if isinstance(value, dict):
            for k, v in value.items():
                if meta.get(key, {}).get(k) != v:
                    out.append(f"{k}: was {meta.get(key, {}).get(k)!r}, now {v!r}")
        elif meta.get(key) != value:
            out.append(f"{key}: was {meta.get(key)!r}, now {value!r}")
    return out


def _save(out: Path, run: _Run, *, finished: bool) -> None:
    import jax
    from flax import serialization

    from koclip import save_checkpoint

    params = jax.device_get(run.params)
    extra = {META_FILE: json.dumps(run.meta, ensure_ascii=False, indent=2).encode("utf-8")}
    if not finished:
        state = {
            "step": run.step,
            "opt_state": serialization.to_state_dict(jax.device_get(run.opt_state)),
        }
        extra[STATE_FILE] = serialization.msgpack_serialize(state)
    save_checkpoint(out, run.config, params, tokenizer=run.tokenizer, extra_files=extra)


def _restore_opt_state(out: Path, template: Any, step: int) -> Any:
    from flax import serialization

    path = out / STATE_FILE
    try:
        raw = serialization.msgpack_restore(path.read_bytes())
        if int(raw["step"]) != step:
            raise ValueError(f"optimizer state is of step {raw['step']}, weights of step {step}")
        return serialization.from_state_dict(template, raw["opt_state"])
    except FileNotFoundError:
        raise TrainError(f"{path} is missing; start over with --no-resume") from None
    except Exception as exc:  # msgpack and flax raise many types on damaged or foreign files
        raise TrainError(f"{path}: cannot restore ({exc}); start over with --no-resume") from None


# --- the run ------------------------------------------------------------------------------------


def train(
    captions_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    base_model: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: TrainOptions = TrainOptions(),
    progress: ProgressCallback | None = None,
) -> TrainSummary:
    """Fine-tune `base_model` on a captions file into `out_dir` (resuming a run found there)."""
    import jax
    import jax.numpy as jnp

    from koclip import load_params, load_wordpiece, model_id_for, resolve
    from koclip.runtime import enable_compilation_cache
    from koclip.train import make_optimizer, make_train_step, warmup_steps_for

    records = read_captions(captions_file, images_dir)
    out = Path(out_dir).expanduser().resolve()
    meta = read_meta(out)
    train_idx, val_idx = split_indices(len(records), options.val_split, options.seed)
    check_batch(options.batch_size, len(train_idx), len(val_idx))
    batch_size = options.batch_size
    steps_per_epoch = len(train_idx) // batch_size
    total_steps = steps_per_epoch * options.epochs
    base = resolve(base_model)
    identity = {
        "base_model": model_id_for(base_model),
        "base_fingerprint": base.fingerprint,
        "options": options.schedule(),
        "data": {"images": len(records), "digest": data_digest(records)},
    }

    resuming = meta is not None and options.resume
    if resuming:
        wrong = _mismatches(meta, identity)
        if wrong:
            raise TrainError(
                f"{out} holds a run with other settings ({'; '.join(wrong)}); rerun with the "
                "same ones, pass --no-resume to start over, or choose another --out"
            )
        files = resolve(out)
    else:
        files = base
        meta = {
            "format": META_FORMAT,
            **identity,
            "batch_size": batch_size,
            "total_steps": total_steps,
            "steps_per_epoch": steps_per_epoch,
            "step": 0,
            "epoch_loss": [0.0, 0],
            "history": [],
            "finished": False,
        }
    config = files.config
    max_length = options.max_length or min(DEFAULT_MAX_LENGTH, config.text.max_positions)
    if max_length > config.text.max_positions:
        raise TrainError(
            f"max_length {max_length} is over the model's {config.text.max_positions} "
            "text positions"
        )
    if resuming and meta["finished"]:
        return _summary(out, meta, 0, 0, 0.0, len(train_idx), len(val_idx))

    params = jax.tree_util.tree_map(jnp.asarray, load_params(files, ("text", "vision")))
    tokenizer = load_wordpiece(_tokenizer_dir(files))
    optimizer = make_optimizer(
        params,
        learning_rate=options.learning_rate,
        total_steps=total_steps,
        warmup_steps=warmup_steps_for(options.warmup, total_steps),
        weight_decay=options.weight_decay,
        freeze=options.freeze,  # type: ignore[arg-type]
    )
    opt_state = optimizer.init(params)
    enable_compilation_cache()  # a rerun or a resume skips compiling the step again
    if resuming:
        opt_state = _restore_opt_state(out, opt_state, int(meta["step"]))
    run = _Run(config, params, opt_state, tokenizer, meta)
    step_fn = make_train_step(config, optimizer, options.freeze)  # type: ignore[arg-type]
    maker = BatchMaker(
        tokenizer, config.vision.image_size, max_length, options.prompt, options.workers
    )
    return _loop(run, step_fn, maker, records, train_idx, val_idx, options, out, progress)


def _loop(
    run: _Run,
    step_fn: Any,
    maker: BatchMaker,
    records: Sequence[CaptionRecord],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    options: TrainOptions,
    out: Path,
    progress: ProgressCallback | None,
) -> TrainSummary:
    meta = run.meta
    batch_size, per_epoch = meta["batch_size"], meta["steps_per_epoch"]
    total = meta["total_steps"]
    first_step = run.step
    started = time.perf_counter()
    speed = _Throughput(batch_size)
    for epoch in range(first_step // per_epoch, options.epochs):
        skip = run.step - epoch * per_epoch  # steps of this epoch done before a resume
        order, captions = epoch_plan(records, train_idx, options.seed, epoch)
        end = per_epoch * batch_size
        chosen = [records[i] for i in order[skip * batch_size : end]]
        for batch in maker.batches(chosen, captions[skip * batch_size : end], batch_size):
            run.params, run.opt_state, metrics = step_fn(run.params, run.opt_state, batch)
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise TrainError(
                    f"the loss became {loss} at step {run.step + 1}; lower --lr and start over"
                )
            meta["step"] += 1
            meta["epoch_loss"] = [meta["epoch_loss"][0] + loss, meta["epoch_loss"][1] + 1]
            speed.step_done()
            rate = speed.rate
            left = (total - run.step) * batch_size / rate if rate > 0 else None
            if progress:
                progress(
                    TrainProgress(
                        epoch + 1, options.epochs, run.step, total, _epoch_loss(meta), rate, left
                    )
                )
            if options.save_every and run.step % options.save_every == 0 and run.step % per_epoch:
                _save(out, run, finished=False)
                speed.restart()
        validation = _validate(run, records, val_idx, options, maker) if len(val_idx) else None
        meta["history"].append(
            dataclasses.asdict(
                EpochResult(
                    epoch + 1, _epoch_loss(meta), validation.to_json() if validation else None
                )
            )
        )
        meta["epoch_loss"] = [0.0, 0]
        meta["finished"] = run.step == total
        _save(out, run, finished=meta["finished"])
        speed.restart()
        if progress:
            progress(
                TrainProgress(
                    epoch + 1,
                    options.epochs,
                    run.step,
                    total,
                    meta["history"][-1]["loss"],
                    speed.rate,
                    None,
                    True,
                    validation,
                )
            )
    seconds = time.perf_counter() - started
    return _summary(
        out,
        meta,
        run.step - first_step,
        first_step,
        seconds,
        len(train_idx),
        len(val_idx),
        speed.rate,
    )


class _Throughput:
    """Images/s of the training steps (with their data loading) alone: not the first step of a
    run, which compiles, nor validation and checkpoint writing."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.busy = 0.0
        self.steps = 0
        self._mark: float | None = None

    def step_done(self) -> None:
        now = time.perf_counter()
        if self._mark is not None:
            self.busy += now - self._mark
            self.steps += 1
        self._mark = now

    def restart(self) -> None:
        """After other work: the next step is timed from now."""
        self._mark = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.steps * self.batch_size / self.busy if self.busy > 0 else 0.0


def _tokenizer_dir(files: Any) -> Path | None:
    """The checkpoint folder if it carries its tokenizer (else koclip falls back to klue's)."""
    from koclip import TOKENIZER_FILES

    has = any((files.directory / name).is_file() for name in TOKENIZER_FILES)
    return files.directory if has else None


def _epoch_loss(meta: dict[str, Any]) -> float:
    total, count = meta["epoch_loss"]
    return total / count if count else float("nan")


def _validate(
    run: _Run,
    records: Sequence[CaptionRecord],
    val_idx: np.ndarray,
    options: TrainOptions,
    maker: BatchMaker,
) -> Recall:
    from koclip.api import KoCLIP
    from koclip.encoder import Encoder

    model = KoCLIP(run.config, run.params)
    encoder = Encoder(model, run.tokenizer, model_id="", fingerprint="")
    both = MemoryEncoders(encoder)
    # Validation asks what search will see: captions with the prompt iff training used it.
    return evaluate_records(
        [records[i] for i in val_idx], both, both, prompt=options.prompt, workers=maker.workers
    )


def _summary(
    out: Path,
    meta: dict[str, Any],
    steps_this_run: int,
    resumed_from: int,
    seconds: float,
    n_train: int,
    n_val: int,
    rate: float = 0.0,
) -> TrainSummary:
    history = tuple(EpochResult(**e) for e in meta["history"])
    return TrainSummary(
        out=out,
        base_model=meta["base_model"],
        steps=int(meta["step"]),
        total_steps=int(meta["total_steps"]),
        steps_this_run=steps_this_run,
        resumed_from_step=resumed_from,
        batch_size=int(meta["batch_size"]),
        train_images=n_train,
        val_images=n_val,
        seconds=seconds,
        images_per_sec=rate,
        history=history,
    )
