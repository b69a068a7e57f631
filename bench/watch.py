"""A live library: how soon a photo is searchable after it lands, and what an idle watcher costs.

    .venv/bin/python bench/watch.py                     # tiny model, a few minutes on 2 cores
    .venv/bin/python bench/watch.py --model base        # koclip-base-sized random weights

Each measurement runs `koclip-search index PHOTO_DIR --watch` as its own process, as a user
would. Rows:

* latency: from the moment a file's last write returned (its copy into the photo folder
  finished) to the moment a reader sees it, i.e. its row is committed and its id is in the
  saved FAISS file (what `search` and `serve` load). p50 / p95 over `--singles` photos copied
  one at a time, then over a `--import-n`-photo import copied as fast as the disk takes it.
  The settle time (`--settle`, how long a file must stay unchanged before it is read) is
  part of every number.
* idle CPU: the watcher process's CPU time (user + system, all threads, from /proc) over
  `--idle-seconds` with nothing changing, on a tree of `--files` files in folders of 100,
  with native events (inotify) and with `--poll` (a full walk every 30 s). The files are not
  photos so that the first pass is quick; what watching costs depends on the number of files
  and folders, not on what they hold. "ready" is the time from start to watching (model
  load, first pass and, for inotify, one watch per folder).

Other processes on the machine slow every row; the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from bench._common import (  # noqa: E402
    cli_argv,
    load_line,
    print_columns,
    repo_env,
    tiny_checkpoint,
    vision_checkpoint,
    write_photo,
)

# -- the watcher process ----------------------------------------------------------------------


class Watcher:
    """`index ROOT --watch` in a child process; `ready` is set once it says it is watching."""

    def __init__(self, root: Path, model: Path, settle: float, *extra: str) -> None:
        self.started = time.monotonic()
        self.ready = threading.Event()
        self.ready_after: float | None = None
        self.stderr: list[str] = []
        watch = ["index", str(root), "--watch", "--model", str(model), "--settle", str(settle)]
        self.proc = subprocess.Popen(
            cli_argv(*watch, "--json", *extra),
            cwd=REPO,
            env=repo_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.passes: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_passes, daemon=True).start()

    def _read_passes(self) -> None:
        for line in self.proc.stdout:
            self.passes.append(json.loads(line))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "watching" in line and not self.ready.is_set():
                self.ready_after = time.monotonic() - self.started
                self.ready.set()

    def wait_ready(self, timeout: float = 600) -> None:
        if not self.ready.wait(timeout):
            self.stop()
            raise RuntimeError("the watcher never started:\n" + "".join(self.stderr))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (every thread), from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- a reader's view ------------------------------------------------------------------------


class Reader:
    """When each path became searchable: its row committed and its id in the saved index file."""

    def __init__(self, library_dir: Path) -> None:
        self.library_dir = library_dir
        self._stamp: tuple[int, int] | None = None
        self._ids: set[int] = set()

    def wait_for(
        self, paths: list[str], watcher: Watcher, timeout: float = 1800
    ) -> dict[str, float]:
        """Poll every 20 ms until every path is searchable; returns path -> time.time() seen."""
        import db
        from db import vectors

        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        with db.Library.open(self.library_dir) as lib:
            index_path = lib.index_path()
            while len(seen) < len(paths):
                if watcher.proc.poll() is not None:
                    raise RuntimeError("the watcher exited:\n" + "".join(watcher.stderr))
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(seen)} of {len(paths)} became searchable")
                try:
                    st = os.stat(index_path)
                except FileNotFoundError:
                    st = None
                stamp = (st.st_ino, st.st_mtime_ns) if st else None
                if stamp != self._stamp and stamp is not None:
                    now = time.time()
                    self._stamp = stamp
                    self._ids = set(vectors.index_ids(vectors.read_index(index_path)).tolist())
                    pending = [p for p in paths if p not in seen]
                    with lib.session() as s, s.begin():
                        for start in range(0, len(pending), 500):
                            chunk = pending[start : start + 500]
                            for path, pid in s.execute(
                                db.Photo.__table__.select()
                                .with_only_columns(db.Photo.path, db.Photo.id)
                                .where(db.Photo.path.in_(chunk))
                            ):
                                if pid in self._ids:
                                    seen[path] = now
                time.sleep(0.02)
        return seen


# -- measurements -----------------------------------------------------------------------------


def make_photos(folder: Path, n: int, start: int = 0) -> list[Path]:
    return [write_photo(folder / f"{i:05d}.jpg", i, (1024, 768)) for i in range(start, start + n)]


def latency(model: Path, work: Path, settle: float, singles: int, import_n: int) -> dict:
    root, src = work / "photos", work / "src"
    make_photos(root, 1)
    sources = make_photos(src, singles + import_n, start=1)
    watcher = Watcher(root, model, settle)
    try:
        watcher.wait_ready()
        reader = Reader(root / ".koclip-search")
        single_lat = []
        for source in sources[:singles]:
            target = root / "one" / source.name
            target.parent.mkdir(exist_ok=True)
            shutil.copy(source, target)
            written = time.time()
            seen = reader.wait_for([f"one/{source.name}"], watcher)
            single_lat.append(seen[f"one/{source.name}"] - written)
        written_at: dict[str, float] = {}
        (root / "import").mkdir()
        for source in sources[singles:]:
            shutil.copy(source, root / "import" / source.name)
            written_at[f"import/{source.name}"] = time.time()
        seen = reader.wait_for(list(written_at), watcher)
        import_lat = [seen[p] - written_at[p] for p in written_at]
        copy_seconds = max(written_at.values()) - min(written_at.values())
    finally:
        watcher.stop()
    import_passes = [p for p in watcher.passes[1 + singles :] if not p["full"]]
    return {
        "single": single_lat,
        "import": import_lat,
        "copy_seconds": copy_seconds,
        "passes": len(import_passes),
        "pass_seconds": sum(p["seconds"] for p in import_passes),
    }


def make_tree(root: Path, n_files: int, per_folder: int = 100) -> None:
    for i in range(n_files):
        folder = root / f"d{i // per_folder // 100:03d}" / f"e{i // per_folder % 100:02d}"
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:06d}.txt").write_bytes(b"x")


def idle_cpu(model: Path, tree: Path, seconds: float, poll: float | None) -> dict:
    watcher = Watcher(tree, model, 2.0, *(["--poll", str(poll)] if poll else []))
    try:
        watcher.wait_ready()
        time.sleep(3.0)  # let the first poll (or the watches' setup) pass
        before, t0 = watcher.cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        cpu, wall = watcher.cpu_seconds() - before, time.monotonic() - t0
    finally:
        watcher.stop()
    return {"ready": watcher.ready_after, "cpu_pct": 100 * cpu / wall}


# -- the table --------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", choices=["tiny", "base"], default="tiny")
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--singles", type=int, default=20)
    ap.add_argument("--import-n", type=int, default=1000)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--idle-seconds", type=float, default=90.0)
    ap.add_argument("--poll", type=float, default=30.0, help="polling interval to measure")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-idle", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="koclip-bench-watch-") as tmp:
        work = Path(tmp)
        model = tiny_checkpoint(work) if args.model == "tiny" else vision_checkpoint(work)
        what = "tiny random model" if args.model == "tiny" else "koclip-base-sized random weights"
        rows = []
        if not args.skip_latency:
            lat = latency(model, work / "lat", args.settle, args.singles, args.import_n)
            for name, values, n in (
                ("single photo", lat["single"], args.singles),
                (f"{args.import_n:,}-photo import", lat["import"], args.import_n),
            ):
                rows.append(
                    (
                        f"latency, {name} (n={n})",
                        f"p50 {pct(values, 0.5):.2f} s",
                        f"p95 {pct(values, 0.95):.2f} s",
                    )
                )
            rows.append(
                (
                    "  import: copy, passes",
                    f"copied in {lat['copy_seconds']:.1f} s",
                    f"{lat['passes']} passes, {lat['pass_seconds']:.1f} s indexing",
                )
            )
        if not args.skip_idle:
            tree = work / "tree"
            make_tree(tree, args.files)
            for poll in (None, args.poll):
                r = idle_cpu(model, tree, args.idle_seconds, poll)
                how = f"polling every {poll:g} s" if poll else "inotify"
                per_look = f", {r['cpu_pct'] / 100 * poll:.1f} CPU-s a look" if poll else ""
                rows.append(
                    (
                        f"idle CPU, {args.files:,} files, {how}",
                        f"{r['cpu_pct']:.2f} % of a core",
                        f"ready in {r['ready']:.1f} s{per_look}",
                    )
                )
    print(f"\n{what}, settle {args.settle:g} s, {load_line(digits=2)}")
    if rows:
        print_columns(rows)
    if rows and not args.skip_latency:
        print(f"(latency mean of single photos: {statistics.mean(lat['single']):.2f} s)")


if __name__ == "__main__":
    main()
