"""What a user's `pip install koclip-search` costs, and how long until the first search answers.

    .venv/bin/python bench/install.py                     # the round's base 0a748c8 against HEAD
    .venv/bin/python bench/install.py --rev main --rev HEAD --keep

For each revision: `git worktree add` a detached checkout in a temporary folder outside the
repository, make a fresh venv (this interpreter's `venv`, its bundled pip) and time
`pip install -q CHECKOUT`: the core install a user does, not editable, no extras. Each revision
gets its own pip cache, empty at first, and is installed twice, into two fresh venvs: the first
install downloads everything (cold), the second reads pip's cache (warm). pip caches only what it
fetched over HTTP, and only where the server allows it (a proxy that drops Cache-Control leaves
the cache empty: the row "pip cache after both installs" shows it, and then both installs are
cold); wheels on a file:// index configured on the machine are read in place both times (the
download rows say how many). The second venv is the one measured:

* download: the wheels `pip download` fetches for the checkout, summed;
* site-packages: `du` of the folder (disk blocks), and its distributions (`pip list`, less
  pip, setuptools and wheel);
* the largest distributions: the files each one's RECORD names, summed (`--top`);
* time to first search: with a fresh HOME (so no model, compilation or fast-tower cache from an
  earlier run), HF_HUB_OFFLINE=1, wall seconds of `koclip-search index` over `--photos`
  generated JPEGs with a tiny local checkpoint (koclip.testing.build_tiny_checkpoint, built once
  by this interpreter into `--cache`, read by every revision through `--model DIR`), then of one
  `koclip-search search`, then of the same search again (what every later search pays, the
  median of three).

A tiny model keeps the model's own load and arithmetic out of the times: what is left is
importing the product and its dependencies, building the fast towers, SQLite and FAISS. The
checkouts, venvs and pip caches are removed at the end unless `--keep`.

Everything runs in child processes on a shared machine: the load average is printed before and
after, and the install times include the network (PyPI and any index pip is configured with).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import cpu_model, load_line, photo_folder, tiny_checkpoint  # noqa: E402

BASE = "0a748c8"  # the round's base: before issue 24's dependency change
NOT_COUNTED = {"pip", "setuptools", "wheel"}  # what a fresh venv brings, not the product

# Run by each venv's own interpreter: bytes of the files each distribution's RECORD names.
_SIZES = """
import json, os
from importlib import metadata
out = {}
for d in metadata.distributions():
    total = 0
    for f in d.files or ():
        try:
            total += os.lstat(d.locate_file(f)).st_size
        except OSError:
            pass
    out[d.metadata["Name"]] = total
print(json.dumps(out))
"""


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def timed_run(argv: list[str], env: dict[str, str], cwd: Path, what: str) -> float:
    """Wall seconds of one command; its output is kept and shown only if it fails."""
    print(f"  {what} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{what} failed (exit {done.returncode}): {' '.join(argv)}")
    print(f"  {what}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return seconds


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would let a child see the repository or another setup."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
        and not k.startswith(("KOCLIP_", "HF_", "PIP_CACHE", "XDG_CACHE", "JAX_"))
    }
    return env | extra


def fresh_venv(path: Path) -> Path:
    """A new venv at `path` (replacing one there); its interpreter."""
    if path.exists():
        shutil.rmtree(path)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def site_packages(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sk", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0]) * 1024


def measure(rev: str, work: Path, ckpt: Path, photos: Path, query: str) -> dict:
    sha = git("rev-parse", "--short=7", f"{rev}^{{commit}}")
    print(f"{rev} ({sha}):", file=sys.stderr, flush=True)
    root = work / sha
    src = root / "src"
    root.mkdir(parents=True, exist_ok=True)
    git("worktree", "add", "--detach", str(src), sha)
    try:
        pip_env = clean_env(PIP_CACHE_DIR=str(root / "pip-cache"))
        result: dict = {"rev": rev, "sha": sha}
        for n, name in ((1, "install_cold_s"), (2, "install_warm_s")):
            python = fresh_venv(root / "venv")
            result[name] = timed_run(
                [str(python), "-m", "pip", "install", "-q", str(src)],
                pip_env,
                root,
                f"pip install #{n}",
            )
        result["pip_cache_bytes"] = (
            du_bytes(root / "pip-cache") if (root / "pip-cache").exists() else 0
        )
        result["pip"] = subprocess.run(
            [str(python), "-m", "pip", "--version"], check=True, capture_output=True, text=True
        ).stdout.split()[1]
        listed = json.loads(
            subprocess.run(
                [str(python), "-m", "pip", "list", "--format", "json"],
                env=pip_env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        result["packages"] = sorted(p["name"] for p in listed if p["name"] not in NOT_COUNTED)
        result.update(downloads(python, src, root, pip_env))
        sp = site_packages(python)
        result["site_packages_bytes"] = du_bytes(sp)
        sizes = json.loads(
            subprocess.run(
                [str(python), "-c", _SIZES], check=True, capture_output=True, text=True
            ).stdout
        )
        result["sizes"] = {k: v for k, v in sizes.items() if k not in NOT_COUNTED}

        home = root / "home"  # a user who has never run it: no caches of any kind
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        run_env = clean_env(HOME=str(home), HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
        exe = str(python.parent / "koclip-search")
        library = root / "library"
        shutil.rmtree(library, ignore_errors=True)
        common = ["--library", str(library), "--model", str(ckpt)]
        result["index_s"] = timed_run(
            [exe, "index", str(photos), *common], run_env, home, "koclip-search index"
        )
        search = [exe, "search", query, *common, "-k", "5"]
        result["search_s"] = timed_run(search, run_env, home, "koclip-search search")
        result["search_again_s"] = statistics.median(
            timed_run(search, run_env, home, f"koclip-search search again #{i + 1}")
            for i in range(3)
        )
        return result
    finally:
        git("worktree", "remove", "--force", str(src))


def downloads(python: Path, src: Path, root: Path, env: dict[str, str]) -> dict:
    """What a user downloads: the wheels `pip download` fetches for the checkout (their sizes),
    and how many of them pip found on an index of this machine (file://) rather than the network
    (the `--dry-run --report` of the same install)."""
    wheels = root / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    pip = [str(python), "-m", "pip"]
    subprocess.run([*pip, "download", "-q", "-d", str(wheels), str(src)], env=env, check=True)
    report_path = root / "report.json"
    subprocess.run(
        [*pip, "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report_path),
         str(src)],
        env=env,
        check=True,
    )  # fmt: skip
    report = json.loads(report_path.read_text())
    local = sum(
        1
        for item in report["install"]
        if item["download_info"]["url"].startswith("file:")
        and item["metadata"]["name"] != "koclip-search"
    )
    files = [f for f in wheels.iterdir() if not f.name.startswith(("koclip_search", "koclip-"))]
    return {
        "download_bytes": sum(f.stat().st_size for f in files),
        "download_files": len(files),
        "download_local": local,
    }


def mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def print_report(results: list[dict], load_before: str, top: int, n_photos: int) -> None:
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    print(f"Python {platform.python_version()}, pip {results[0]['pip']} (a fresh venv's own)")
    print(f"before: {load_before}")
    print(f"after:  {load_line()}")
    print()
    rows = [
        ("", *(f"{r['rev']} ({r['sha']})" for r in results)),
        ("site-packages (du)", *(mb(r["site_packages_bytes"]) for r in results)),
        ("packages (pip list, less pip/setuptools)", *(str(len(r["packages"])) for r in results)),
        ("download (the wheels pip fetches)", *(mb(r["download_bytes"]) for r in results)),
        ("  of them found on this machine's indexes",
         *(f"{r['download_local']} of {r['download_files']}" for r in results)),
        ("pip install, empty cache", *(f"{r['install_cold_s']:.0f} s" for r in results)),
        ("pip install, warm cache", *(f"{r['install_warm_s']:.0f} s" for r in results)),
        ("pip cache after both installs", *(mb(r["pip_cache_bytes"]) for r in results)),
        (f"first `index` ({n_photos} photos, tiny model)", *(f"{r['index_s']:.1f} s" for r in results)),
        ("first `search`", *(f"{r['search_s']:.1f} s" for r in results)),
        ("time to first search (index + search)",
         *(f"{r['index_s'] + r['search_s']:.1f} s" for r in results)),
        ("`search` again (median of 3)", *(f"{r['search_again_s']:.1f} s" for r in results)),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    first, last = results[0], results[-1]
    if len(results) > 1:
        gone = sorted(set(first["packages"]) - set(last["packages"]), key=str.lower)
        added = sorted(set(last["packages"]) - set(first["packages"]), key=str.lower)
        print()
        print(f"only in {first['rev']}: {', '.join(gone) or '-'}")
        print(f"only in {last['rev']}: {', '.join(added) or '-'}")
    for r in results:
        print()
        print(f"largest distributions in {r['rev']} ({r['sha']}), the files their RECORD names:")
        biggest = sorted(r["sizes"].items(), key=lambda kv: -kv[1])[:top]
        for name, size in biggest:
            print(f"  {name:<24} {size / 1e6:8.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rev",
        action="append",
        help=f"A git revision to install; repeatable, in column order (default: {BASE} and HEAD).",
    )
    parser.add_argument("--photos", type=int, default=20, help="Generated JPEGs to index.")
    parser.add_argument("--query", default="바닷가의 일몰", help="What the search asks.")
    parser.add_argument("--top", type=int, default=10, help="Largest distributions to list.")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "koclip-bench",
        help="Where the tiny checkpoint and the photos are kept between runs.",
    )
    parser.add_argument(
        "--keep", action="store_true", help="Keep the venvs, pip caches and libraries."
    )
    args = parser.parse_args()
    revs = args.rev or [BASE, "HEAD"]

    args.cache.mkdir(parents=True, exist_ok=True)
    ckpt = tiny_checkpoint(args.cache)
    photos = photo_folder(args.cache, args.photos, (1024, 768), processes=False)
    load_before = load_line()
    work = Path(tempfile.mkdtemp(prefix="koclip-install-"))
    print(f"working in {work}", file=sys.stderr)
    try:
        results = [measure(rev, work, ckpt, photos, args.query) for rev in revs]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_report(results, load_before, args.top, args.photos)


if __name__ == "__main__":
    main()
