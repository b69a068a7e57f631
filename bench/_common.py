"""What the benchmarks share: timing and memory, the machine-load line, the result table, the
command line, generated photos and synthetic libraries.

A bench script puts the repository first on sys.path, then imports from here:

    REPO = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(REPO))
    from bench._common import Table, load_line  # noqa: E402

Heavy imports (numpy, PIL, SQLAlchemy, db) happen inside the functions that need them, so a
child process that only times an import does not pay for them.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    import db

REPO = Path(__file__).resolve().parents[1]
DIM = 512  # koclip-base's embedding size, the synthetic libraries' too

# -- timing ---------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def runs(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds each of `repeats` calls takes."""
    return [timed(fn) for _ in range(repeats)]


def p50_ms(samples: list[float]) -> float:
    """Median in milliseconds."""
    return 1000 * statistics.median(samples)


def p50_best(samples: list[float], digits: int = 1) -> str:
    """`p50 (best)` in ms: on a shared machine the best run shows the uncontended cost."""
    return f"{p50_ms(samples):.{digits}f} ms p50 (best {1000 * min(samples):.{digits}f})"


# -- memory and the machine -----------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_bytes() -> int:
    """Current resident bytes of this process (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def load_average() -> float:
    """The 1-minute load average: other work on the machine slows every row."""
    return os.getloadavg()[0]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; else what `platform` says)."""
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_line(digits: int = 1) -> str:
    """`load average 1.2, 0.9, 0.7 on 2 CPU cores`, printed with every table."""
    load = ", ".join(f"{x:.{digits}f}" for x in os.getloadavg())
    return f"load average {load} on {os.cpu_count()} CPU cores"


# -- the table -------------------------------------------------------------------------------------


class Table:
    """Rows of (what, value, baseline/target, verdict), echoed on stderr as they come and
    printed as a Markdown table at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, what: str, value: str, against: str = "", ok: bool | None = None) -> None:
        verdict = "" if ok is None else ("ok" if ok else "MISS")
        self.rows.append((what, value, against, verdict))
        print(f"  {what}: {value} {against} {verdict}", file=sys.stderr, flush=True)

    def print(self) -> None:
        header = ("measure", "value", "baseline / target", "")
        widths = [max(len(r[i]) for r in (header, *self.rows)) for i in range(4)]
        for i, row in enumerate((header, *self.rows)):
            print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
            if i == 0:
                print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def print_columns(rows: list[tuple[str, ...]]) -> None:
    """Rows as left-aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# -- the command line ------------------------------------------------------------------------------


def cli_argv(*args: str) -> list[str]:
    """`koclip-search ARGS` as this interpreter runs it from the repository."""
    return [sys.executable, "-c", "from cli import main; main()", *args]


def repo_env(**extra: str) -> dict[str, str]:
    """This environment with the repository on PYTHONPATH (for child processes)."""
    return os.environ | {"PYTHONPATH": str(REPO)} | extra


# -- checkpoints ----------------------------------------------------------------------------------


def vision_checkpoint(cache: Path) -> Path:
    """koclip-base's vision tower (ViT-B/32 + 512-d projection), realistic random weights; tiny text."""
    path = cache / "ckpt-base-vision-realistic"
    if (path / "config.json").exists():
        return path
    from koclip.config import KoCLIPConfig, VisionConfig
    from koclip.testing import random_params, tiny_vocab, write_checkpoint

    text = KoCLIPConfig.tiny(vocab_size=len(tiny_vocab())).text
    config = KoCLIPConfig(text=text, vision=VisionConfig.clip_base_patch32(), projection_dim=512)
    write_checkpoint(path, config, random_params(config, realistic=True))
    return path


def tiny_checkpoint(cache: Path) -> Path:
    """A tiny random model: with it, a run measures the pipeline's own cost and memory."""
    path = cache / "ckpt-tiny"
    if not (path / "config.json").exists():
        from koclip.testing import build_tiny_checkpoint

        build_tiny_checkpoint(path)
    return path


# -- photos ----------------------------------------------------------------------------------------


def write_photo(path: Path | str, seed: int, size: tuple[int, int]) -> Path:
    """A JPEG that compresses like a photo: smooth colour fields (a 16x12 random image scaled
    up) with grain."""
    import numpy as np
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    image = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.normal(0, 4, (h, w, 1)).astype(np.int16)  # grain, so JPEG sizes look like photos
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


def _write_photo_job(job: tuple[str, int, tuple[int, int]]) -> None:
    write_photo(*job)


def photo_folder(cache: Path, n: int, size: tuple[int, int], processes: bool = True) -> Path:
    """A folder of `n` generated photos of `size` (`00000.jpg`, ...), cached between runs;
    `processes`: written by a pool of one process per CPU."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    folder = cache / f"photos-{size[0]}x{size[1]}-{n}"
    if not (folder / ".done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [(str(folder / f"{i:05d}.jpg"), i, size) for i in range(n)]
        print(f"generating {n} {size[0]}x{size[1]} JPEGs in {folder} ...", file=sys.stderr)
        if processes:
            with ProcessPoolExecutor(os.cpu_count(), mp_context=get_context("spawn")) as pool:
                list(pool.map(_write_photo_job, jobs, chunksize=4))
        else:
            for job in jobs:
                _write_photo_job(job)
        (folder / ".done").write_text("")
    return folder


# -- synthetic libraries --------------------------------------------------------------------------


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows L2-normalised, as float32."""
    import numpy as np

    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, seed: int, queries: bool = False) -> np.ndarray:
    """CLIP-like synthetic embeddings: 4096 clusters in a 64-d subspace plus isotropic noise.

    Queries come from the same clusters but are pushed away from the images' mean direction,
    like text embeddings across CLIP's modality gap. Real embeddings have such structure;
    uniform random 512-d vectors (no neighbours to speak of) are ANN's worst case.
    """
    import numpy as np

    latent, centres_n = 64, 4096
    fixed = np.random.default_rng(1234)
    proj = np.linalg.qr(fixed.standard_normal((DIM, latent)))[0].T.astype(np.float32)
    centres = fixed.standard_normal((centres_n, latent)).astype(np.float32)
    mean = unit_rows(fixed.standard_normal((1, DIM)))[0]
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for lo in range(0, n, 100_000):
        m = min(100_000, n - lo)
        z = centres[rng.integers(0, centres_n, m)] + 0.6 * rng.standard_normal(
            (m, latent), dtype=np.float32
        )
        x = z @ proj / np.sqrt(latent) + 0.7 / np.sqrt(DIM) * rng.standard_normal(
            (m, DIM), dtype=np.float32
        )
        out[lo : lo + m] = unit_rows(x + (-0.3 if queries else 0.9) * mean)
    return out


def random_unit_chunks(n: int, seed: int = 0, chunk: int = 20_000) -> Iterable[np.ndarray]:
    """`n` random 512-d unit vectors, `chunk` at a time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for lo in range(0, n, chunk):
        yield unit_rows(rng.standard_normal((min(chunk, n - lo), DIM)))


def write_library(
    library_dir: Path,
    manifest: db.Manifest,
    chunks: Iterable[np.ndarray],
    build_index: bool = True,
) -> None:
    """A library of the vectors in `chunks` (one transaction each: never all in RAM) under
    `manifest`, with no photos behind them: photo i is `YYYY/MM/IMG_i.jpg`, taken every 53
    minutes from 2015-01-01. `build_index`: its manifest's index type, built and saved."""
    from datetime import datetime, timedelta

    from sqlalchemy import insert

    import db

    start = datetime(2015, 1, 1)
    with db.LibraryLock(library_dir), db.Library.reset(library_dir) as lib:
        with lib.session() as s, s.begin():
            lib.set_manifest(s, manifest)
        i = 0
        for vecs in chunks:
            rows: list[dict[str, Any]] = []
            for v in vecs:
                taken = start + timedelta(minutes=53 * i)
                rows.append(
                    {
                        "path": f"{taken:%Y}/{taken:%m}/IMG_{i:08d}.jpg",
                        "size": 3_000_000 + i,
                        "mtime_ns": int(taken.timestamp() * 1e9),
                        "content_hash": f"{i:032x}",
                        "width": 4000,
                        "height": 3000,
                        "taken_at": taken,
                        "taken_at_source": "exif",
                        "indexed_at": 0.0,
                        "embedding": db.vector_to_blob(v),
                    }
                )
                i += 1
            with lib.session() as s, s.begin():
                s.execute(insert(db.Photo), rows)
        lib.write_manifest_json()
        if build_index:
            lib.save_index(lib.build_index(manifest.index_type))
