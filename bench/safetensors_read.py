"""Reading one tower of a large safetensors file: the `safetensors` package vs our mmap reader.

    python bench/safetensors_read.py            # a 1.3 GB file (1.0 GB "text", 0.3 GB "vision")
    python bench/safetensors_read.py --gb 0.2   # smaller, quicker

Each reader runs in a fresh process (page cache warm: the file is read once first): open the
file, take every tensor of the vision tower and touch each page. It prints the time and the
process's resident memory after, split into anonymous memory (copies the process owns) and
file-backed pages (shared with the page cache). A zero-copy reader adds no anonymous memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, load_line  # noqa: E402

READERS = ("koclip-mmap", "safetensors-numpy")

CHILD = r"""
import sys, time
sys.path.insert(0, {root!r})
import numpy as np

def rss():
    out = {{}}
    for line in open("/proc/self/status"):
        if line.startswith(("RssAnon", "RssFile")):
            name, kb = line.split()[:2]
            out[name[:-1]] = int(kb) / 1024
    return out

base = rss()
t = time.perf_counter()
if {reader!r} == "koclip-mmap":
    from koclip.checkpoints.safetensors_mmap import open_mmap
    tensors = open_mmap({path!r})
    tower = {{k: v for k, v in tensors.items() if k.startswith("vision/")}}
else:
    from safetensors import safe_open
    with safe_open({path!r}, framework="numpy") as f:
        tower = {{k: f.get_tensor(k) for k in f.keys() if k.startswith("vision/")}}
opened = time.perf_counter() - t
total = sum(float(v[..., ::1024].sum()) for v in tower.values())  # touch every page
touched = time.perf_counter() - t
after = rss()
mb = sum(v.nbytes for v in tower.values()) / 2**20
print(opened, touched, after["RssAnon"] - base["RssAnon"], after["RssFile"] - base["RssFile"], mb)
"""


def write_file(path: Path, gb: float) -> None:
    from safetensors.numpy import save_file

    rows = 1024
    per = rows * 1024 * 4  # one 4 MiB float32 tensor
    n = int(gb * 2**30 / per)
    rng = np.random.default_rng(0)
    block = rng.standard_normal((rows, 1024)).astype(np.float32)
    split = int(n * 0.77)  # ~1.0 GB of 1.3 GB "text", the rest "vision"
    tensors = {f"{'text' if i < split else 'vision'}/{i}": block for i in range(n)}
    save_file(tensors, str(path))


def run(reader: str, path: Path) -> list[float]:
    code = CHILD.format(root=str(REPO), reader=reader, path=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [float(x) for x in out.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        write_file(path, args.gb)
        with open(path, "rb") as fh:  # warm the page cache
            while fh.read(64 << 20):
                pass
        size = os.path.getsize(path) / 2**30
        print(
            f"file {size:.2f} GB; each row: best of {args.repeats} fresh processes ({load_line()})"
        )
        print(
            f"{'reader':<20}{'tower MB':>10}{'open s':>9}{'+touch s':>10}{'anon MB':>10}{'file MB':>10}"
        )
        for reader in READERS:
            rows = [run(reader, path) for _ in range(args.repeats)]
            opened, touched, anon, filed, mb = min(rows, key=lambda r: r[1])
            print(
                f"{reader:<20}{mb:>10.0f}{opened:>9.3f}{touched:>10.3f}{anon:>10.0f}{filed:>10.0f}"
            )


if __name__ == "__main__":
    main()
