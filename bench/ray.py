"""`index --ray`: the driver's ceiling, and Ray's cost end to end against the local pipeline.

    .venv/bin/python bench/ray.py                          # ~5 minutes on 2 busy cores
    .venv/bin/python bench/ray.py --n-driver 50000 --n-e2e 400 --repeat 2

(i) Driver ceiling. The vision tower is replaced by a stand-in that returns 512-d unit vectors
at no cost (given to `RayExecutor` through its `encoder_factory`; no product flag), on tiny
distinct JPEGs, so what is left is the driver's own work: planning (walk + stat + plan),
receiving results (`ray.get`, unpickling), committing them (SQLite, durable) and adding the
vectors to FAISS. The ceiling is photos / (the driver's busy seconds); the workers, here two
on the same two cores, are slower than that, so the run's wall rate is shown apart. The
local pipeline with the same stand-in is the baseline.

(ii) End to end on generated 1024x768 JPEGs with a koclip-base-sized vision tower (ViT-B/32,
512-d, random weights; bench/_common.py builds it): the local pipeline (2 decoding threads) vs
`--ray local` with 2 workers of 1 CPU. Wall time includes everything a user waits for
(starting Ray, loading and compiling the model in each worker); "stages" starts at the first
progress report. Each measurement runs in its own process; the best of `--repeat` is kept.

Run it inside `unshare -n` (then `ip link set lo up`) to keep Ray on loopback.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# This file is named ray.py: its folder must not shadow the real `ray` package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench._common import load_average, photo_folder, vision_checkpoint  # noqa: E402

# -- the stand-in encoder ----------------------------------------------------------------------


class StandIn:
    """A vision tower that costs nothing: one fixed 512-d unit vector per image, rolled by
    the image's mean so vectors differ."""

    model_id = "stand-in"
    fingerprint = "0" * 64
    dim = 512
    precision = "fp32"
    batch_size = 32

    def encode_pixels(self, pixels):
        import numpy as np

        base = np.ones(self.dim, np.float32) / np.sqrt(self.dim)
        shifts = (np.asarray(pixels).mean(axis=(1, 2, 3)) * 1000).astype(int) % self.dim
        return np.stack([np.roll(base, s) for s in shifts]) if len(shifts) else base[:0]


def stand_in_factory(_spec) -> StandIn:
    return StandIn()


def tiny_files(cache: Path, n: int) -> Path:
    """n distinct tiny JPEGs (one 16x12 image, each file with its own trailing bytes)."""
    folder = cache / f"tiny-{n}"
    if not (folder / ".done").exists():
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (16, 12), (90, 120, 150)).save(buf, "JPEG")
        data = buf.getvalue()
        for i in range(n):
            sub = folder / f"{i % 100:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"{i:07d}.jpg").write_bytes(data + str(i).encode())
        (folder / ".done").write_text("")
    return folder


# -- measurements (each in a child process) ------------------------------------------------------


class Timer:
    """Wraps functions to add up the seconds spent in them, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last: dict[str, float] = {}  # when each last returned

    def wrap(self, owner, name: str, key: str) -> None:
        real = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.last[key] = time.perf_counter()
                self.seconds[key] = self.seconds.get(key, 0.0) + self.last[key] - t

        setattr(owner, name, timed)


class _AllReadyFirst:
    """`ray`, except that the first `wait` returns only once every result is ready."""

    def __init__(self, ray) -> None:
        self._real, self._first = ray, True

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def wait(self, refs, **kwargs):
        if self._first:
            self._first = False
            self._real.wait(refs, num_returns=len(refs))
            self.workers_done = time.perf_counter()
        return self._real.wait(refs, **kwargs)


def run_driver(folder: Path, executor: str, workers: int) -> dict:
    from indexer import IndexOptions, index_photos, pipeline, writer
    from indexer.executor import LocalExecutor
    from indexer.ray_executor import RayExecutor, RayOptions

    timer = Timer()
    timer.wrap(pipeline, "make_plan", "plan")
    timer.wrap(writer.Writer, "write_batch", "write")
    timer.wrap(writer.faiss_ops, "add", "faiss")
    timer.wrap(writer.Writer, "finish", "finish")
    stand_in = StandIn()
    made_ray: list = []

    def make(encoder, root, options):
        if executor == "local":
            return LocalExecutor(encoder, workers)
        ray = RayOptions(address="local", workers=workers)
        made = RayExecutor(
            ray, encoder, root, batch_size=options.batch_size, encoder_factory=stand_in_factory
        )
        timer.wrap(made, "_get", "receive")  # after the start-up check: results only
        # Every batch is sent at once and the driver starts only when all are encoded: what
        # it then does is its own work at full speed, in commits of GROUP_COMMIT batches as
        # when many workers keep results waiting. (Bench only: a run keeps 2 per worker.)
        made.max_in_flight = 1 << 30
        made._ray = _AllReadyFirst(made._ray)
        made_ray.append(made._ray)
        return made

    marks: list[float] = []
    with tempfile.TemporaryDirectory() as lib:
        options = IndexOptions(library=Path(lib), batch_size=32, workers=workers)
        start = time.perf_counter()
        summary = index_photos(
            folder,
            options,
            encoder=stand_in,
            make_executor=make,
            progress=lambda d, t: marks.append(time.perf_counter()),
        )
        end = time.perf_counter()
    s = timer.seconds
    out = {
        "n": summary.new,
        "wall_s": end - start,
        "stages_s": end - marks[0],
        "plan_s": s.get("plan", 0.0),
        "receive_s": s.get("receive", 0.0),
        "commit_s": s.get("write", 0.0) - s.get("faiss", 0.0),
        "faiss_s": s.get("faiss", 0.0),
        "finish_s": s.get("finish", 0.0),
    }
    out["driver_s"] = sum(
        out[k] for k in ("plan_s", "receive_s", "commit_s", "faiss_s", "finish_s")
    )
    if made_ray:  # everything the driver did once the results were all there, loop included
        out["drain_s"] = timer.last["finish"] - made_ray[0].workers_done
    return out


def run_e2e(folder: Path, ckpt: Path, executor: str, workers: int) -> dict:
    from indexer import IndexOptions, index_photos
    from indexer.ray_executor import RayOptions

    n = sum(1 for p in folder.iterdir() if p.suffix == ".jpg")
    ray = RayOptions(address="local", workers=workers) if executor == "ray" else None
    marks: list[float] = []
    with tempfile.TemporaryDirectory() as lib:
        options = IndexOptions(
            library=Path(lib), model=str(ckpt), batch_size=32, workers=workers, ray=ray
        )
        start = time.perf_counter()
        summary = index_photos(
            folder, options, progress=lambda d, t: marks.append(time.perf_counter())
        )
        end = time.perf_counter()
    assert summary.new == n and summary.failed == 0, summary
    return {"n": n, "wall_s": end - start, "stages_s": end - marks[0]}


def measure(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the table -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-driver", type=int, default=5000, help="tiny files for (i)")
    parser.add_argument("--n-e2e", type=int, default=200, help="1024x768 JPEGs for (ii)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "koclip-bench")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "driver":
            out = run_driver(Path(rest[0]), rest[1], int(rest[2]))
        else:
            out = run_e2e(Path(rest[0]), Path(rest[1]), rest[2], int(rest[3]))
        print(json.dumps(out))
        return

    args.cache.mkdir(parents=True, exist_ok=True)
    w = str(args.workers)
    print(f"load average before: {load_average():.2f} ({os.cpu_count()} CPUs)")
    if args.n_driver:
        folder = tiny_files(args.cache, args.n_driver)
        runs = {e: [] for e in ("local", "ray")}
        for _ in range(args.repeat):
            for e in runs:
                runs[e].append(measure("driver", str(folder), e, w))
        local = min(runs["local"], key=lambda r: r["wall_s"])
        ray = min(runs["ray"], key=lambda r: r["driver_s"])
        n = ray["n"]
        print(f"\n(i) driver ceiling: {n:,} tiny files, stand-in encoder (512-d), batch 32")
        print("| stage | seconds | photos/s |")
        print("| --- | ---: | ---: |")
        for key in ("plan", "receive", "commit", "faiss", "finish"):
            sec = ray[f"{key}_s"]
            print(f"| {key} | {sec:.2f} | {n / sec if sec else float('inf'):,.0f} |")
        print(
            f"| **driver ceiling** (sum) | {ray['driver_s']:.2f} | **{n / ray['driver_s']:,.0f}** |"
        )
        whole = ray["plan_s"] + ray["drain_s"]
        print(
            f"| plan + the drain up to the final save, loop included | {whole:.2f} | {n / whole:,.0f} |"
        )
        print(
            f"| ray run, wall ({w} workers, decoding) | {ray['wall_s']:.2f} | {n / ray['wall_s']:,.0f} |"
        )
        print(
            f"| local pipeline, wall (baseline) | {local['wall_s']:.2f} | {n / local['wall_s']:,.0f} |"
        )
        print(f"local pipeline's own driver work: {local['driver_s']:.2f} s")
    if args.n_e2e:
        folder = photo_folder(args.cache, args.n_e2e, (1024, 768))
        ckpt = vision_checkpoint(args.cache)
        runs = {e: [] for e in ("local", "ray")}
        measure("e2e", str(folder), str(ckpt), "local", w)  # warm the compilation cache
        for _ in range(args.repeat):
            for e in runs:
                runs[e].append(measure("e2e", str(folder), str(ckpt), e, w))
        best = {e: min(r, key=lambda x: x["wall_s"]) for e, r in runs.items()}
        n = best["local"]["n"]
        print(f"\n(ii) end to end: {n} 1024x768 JPEGs, koclip-base-sized tower (random), batch 32")
        print("| run | wall s | photos/s | stages s | photos/s (stages) | vs local |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for e, label in (
            ("local", f"local pipeline ({w} threads)"),
            ("ray", f"--ray local ({w} workers)"),
        ):
            r = best[e]
            ratio = r["wall_s"] / best["local"]["wall_s"]
            print(
                f"| {label} | {r['wall_s']:.1f} | {n / r['wall_s']:.1f} | {r['stages_s']:.1f} | "
                f"{n / r['stages_s']:.1f} | {ratio:.2f}x |"
            )
    print(f"\nload average after: {load_average():.2f}")


if __name__ == "__main__":
    main()
