"""Retrieval quality of a model on captioned images: recall@k both ways, through search's own path.

Images go the indexer's way (`open_image` -> `preprocess` -> the vision tower) into a
`db.vectors` flat index; captions go through search's `QueryEncoder.texts` (NFC, prompt
template, text tower) and are searched in that index with `db.vectors.search`, exactly as
`koclip-search search` does. Image-to-text searches a second flat index of the captions.
No library is built: nothing is written to disk.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from train.captions import CaptionRecord, CaptionsError, read_captions

KS = (1, 5, 10)
ProgressCallback = Callable[[int, int], None]  # (images done, images in all)


class TextEncoder(Protocol):
    """What evaluation needs for captions: search's `QueryEncoder.texts` signature."""

    def texts(self, texts: Sequence[str], prompt: bool = True) -> np.ndarray: ...


class VisionEncoder(Protocol):
    """What evaluation needs for images: koclip's `Encoder`."""

    image_size: int

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Recall:
    """Recall@k of text-to-image and image-to-text retrieval, as fractions in [0, 1]."""

    text_to_image: dict[int, float]
    image_to_text: dict[int, float]
    images: int
    captions: int
    model: str = ""
    prompt: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """Mean of every recall@k of both directions (COCO's "R-mean")."""
        values = [*self.text_to_image.values(), *self.image_to_text.values()]
        return float(np.mean(values))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict (keys like "R@1")."""
        return {
            "model": self.model,
            "prompt": self.prompt,
            "images": self.images,
            "captions": self.captions,
            "text_to_image": {f"R@{k}": v for k, v in self.text_to_image.items()},
            "image_to_text": {f"R@{k}": v for k, v in self.image_to_text.items()},
            "mean": self.mean,
            **self.extra,
        }

    def to_text(self) -> str:
        """A small table in percent."""
        ks = list(self.text_to_image)
        head = "               " + "".join(f"{'R@' + str(k):>8}" for k in ks)
        rows = [
            ("text → image", self.text_to_image),
            ("image → text", self.image_to_text),
        ]
        lines = [head]
        for name, values in rows:
            lines.append(f"{name:<15}" + "".join(f"{100 * values[k]:8.1f}" for k in ks))
        lines.append(f"{'mean recall':<15}{100 * self.mean:8.1f}")
        prompt = "with the prompt template" if self.prompt else "without a prompt"
        lines.append(
            f"{self.images} images, {self.captions} captions, {prompt}"
            + (f", model {self.model}" if self.model else "")
        )
        return "\n".join(lines)


# --- images -------------------------------------------------------------------------------------


def load_pixels(record: CaptionRecord, size: int) -> np.ndarray:
    """One record's image as the model input, decoded as the indexer does."""
    from koclip import ImageError
    from koclip.images.preprocess import open_image, preprocess
    from koclip.names import MAX_PIXELS

    try:
        image = open_image(record.path, max_pixels=MAX_PIXELS, draft=True, size=size)
        return preprocess(image, size)
    except ImageError as exc:
        raise CaptionsError(f"line {record.line}: image {record.image!r}: {exc}") from None


def iter_pixel_batches(
    records: Sequence[CaptionRecord], size: int, batch_size: int, workers: int | None = None
) -> Iterator[np.ndarray]:
    """(n, size, size, 3) pixel batches in order, decoded by a thread pool two batches ahead."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(workers, thread_name_prefix="koclip-eval") as pool:
        ahead: deque[list[Future[np.ndarray]]] = deque()
        starts = iter(range(0, len(records), batch_size))

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                chunk = records[start : start + batch_size]
                ahead.append([pool.submit(load_pixels, r, size) for r in chunk])

        for _ in range(2):
            submit()
        while ahead:
            futures = ahead.popleft()
            submit()
            yield np.stack([f.result() for f in futures])


def encode_images(
    records: Sequence[CaptionRecord],
    vision: VisionEncoder,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """(n_images, dim) unit vectors of the records' images."""
    chunks, done = [], 0
    for pixels in iter_pixel_batches(records, vision.image_size, batch_size, workers):
        chunks.append(vision.encode_pixels(pixels))
        done += len(pixels)
        if progress:
            progress(done, len(records))
    return np.concatenate(chunks)


# --- recall -------------------------------------------------------------------------------------


def _flat_index(vectors: np.ndarray):
    from db import vectors as dbv

    return dbv.build_index(dbv.FLAT, vectors.shape[1], [(np.arange(len(vectors)), vectors)])


def _hits_at(found: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """found: (n_queries, k) bool, relevant or not, best first -> recall@k per k."""
    first = np.where(found.any(axis=1), found.argmax(axis=1), found.shape[1])
    return {k: float(np.mean(first < k)) for k in ks}


def recall_at_k(
    image_vecs: np.ndarray,
    caption_vecs: np.ndarray,
    caption_image: np.ndarray,
    ks: Sequence[int] = KS,
) -> tuple[dict[int, float], dict[int, float]]:
    """(text->image, image->text) recall@k through FAISS flat indexes (ids = row numbers).

    `caption_image[j]` is the image row caption j describes. An image query counts as found
    when any of its captions is in the top k (the COCO/Flickr30k protocol).
    """
    from db import vectors as dbv

    k_max = max(ks)
    _, image_ids = dbv.search(_flat_index(image_vecs), caption_vecs, min(k_max, len(image_vecs)))
    t2i = _hits_at(image_ids == caption_image[:, None], ks)
    _, caption_ids = dbv.search(
        _flat_index(caption_vecs), image_vecs, min(k_max, len(caption_vecs))
    )
    owner = np.where(caption_ids >= 0, caption_image[np.maximum(caption_ids, 0)], -1)
    i2t = _hits_at(owner == np.arange(len(image_vecs))[:, None], ks)
    return t2i, i2t


def evaluate_records(
    records: Sequence[CaptionRecord],
    text: TextEncoder,
    vision: VisionEncoder,
    *,
    prompt: bool = True,
    ks: Sequence[int] = KS,
    batch_size: int = 32,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    model: str = "",
) -> Recall:
    """Recall@k of `records` with the given encoders (loaded from disk or held in memory)."""
    if not records:
        raise CaptionsError("nothing to evaluate: no captioned images")
    image_vecs = encode_images(
        records, vision, batch_size=batch_size, workers=workers, progress=progress
    )
    captions = [c for r in records for c in r.captions]
    caption_image = np.repeat(np.arange(len(records)), [len(r.captions) for r in records])
    caption_vecs = text.texts(captions, prompt=prompt)
    t2i, i2t = recall_at_k(image_vecs, caption_vecs, caption_image, ks)
    return Recall(t2i, i2t, len(records), len(captions), model=model, prompt=prompt)


# --- encoders -----------------------------------------------------------------------------------


class MemoryEncoders:
    """Both towers of an in-memory `Encoder` (training's validation), search's text signature."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.image_size = encoder.image_size

    def texts(self, texts: Sequence[str], prompt: bool = True) -> np.ndarray:
        from koclip import DEFAULT_PROMPT

        return self.encoder.encode_texts(list(texts), prompt=DEFAULT_PROMPT if prompt else None)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.encoder.encode_pixels(pixels)


def search_encoders(model: str | os.PathLike[str]) -> tuple[Any, Any]:
    """(text, vision) encoders loaded exactly as search loads a library's model."""
    from search import QueryEncoder

    # Not persistent: thousands of captions would evict the user's cached queries.
    query = QueryEncoder.for_model(model, persistent=False)
    return query, query.encoder("vision")


def evaluate(
    captions_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    model: str | os.PathLike[str] = "koclip-base",
    *,
    prompt: bool = True,
    batch_size: int = 32,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> Recall:
    """Recall@1/5/10 both ways of `model` on a captions file (see `train.captions`)."""
    from koclip import model_id_for

    records = read_captions(captions_file, images_dir)
    text, vision = search_encoders(model)
    return evaluate_records(
        records,
        text,
        vision,
        prompt=prompt,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        model=model_id_for(model),
    )
