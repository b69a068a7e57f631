"""What reading a photo's facts adds to the indexer's per-photo work, same run.

    .venv/bin/python bench/facts.py                  # 60 photos, best of 5
    .venv/bin/python bench/facts.py --n 200 --repeat 7

Generated 1024x768 JPEGs (smooth colours with grain, quality 90) carrying EXIF (date, offset,
make, model, lens, GPS), an XMP packet (dc:subject, dc:description) and IPTC keywords and
caption. Rows, per photo, on one thread:

* decode: what the load stage does to pixels today: `open_image` (open, JPEG draft, decode,
  orient, RGB) + `preprocess` (resize, crop, normalise).
* facts: `Image.open` (header only) + `indexer.facts.read_facts` on the opened image.
* decode + facts: both, as the load stage would run them (the facts read from the image it
  opens; here it is opened twice, so this is an upper bound).

The ratio (decode + facts) / decode is the cost of facts at index time (the target is <= 1.05,
before the encoder's share, which only makes it smaller). The runs are interleaved and the
best of `--repeat` kept; other processes on the machine slow every row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_photos(folder: Path, n: int) -> list[Path]:
    from tests.facts_fixtures import (
        gps_tags,
        iptc_segment,
        jpeg_bytes,
        make_exif,
        photo_pixels,
        xmp_packet,
    )

    paths = []
    for i in range(n):
        exif = make_exif(
            taken=f"2024:07:{1 + i % 28:02d} 10:30:00",
            offset="+09:00",
            gps=gps_tags(33.4589 + i * 1e-3, 126.9425, 12.5),
            make="Apple",
            model="iPhone 15",
            lens="iPhone 15 back camera 6mm f/1.6",
        )
        data = jpeg_bytes(
            exif=exif,
            xmp=xmp_packet(["바다", "제주", f"여행{i}"], "성산일출봉 해돋이"),
            segments=[iptc_segment(["가족", "해돋이"], "IPTC 설명")],
            image=photo_pixels((1024, 768), seed=i),
        )
        path = folder / f"photo_{i:04d}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def run(paths: list[Path], what: str) -> float:
    from PIL import Image

    from indexer.facts import read_facts
    from koclip.preprocess import open_image, preprocess

    start = time.perf_counter()
    for path in paths:
        if what in ("facts", "both"):
            with Image.open(path) as image:
                facts = read_facts(image)
            assert facts.has_position and not facts.problems
        if what in ("decode", "both"):
            preprocess(open_image(path, draft=True))
    return (time.perf_counter() - start) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.n)
        run(paths[:5], "both")  # warm the imports and the page cache
        best = {"decode": float("inf"), "facts": float("inf"), "both": float("inf")}
        for _ in range(args.repeat):
            for what in best:
                best[what] = min(best[what], run(paths, what))
    print(f"{args.n} JPEGs 1024x768 with EXIF+GPS+XMP+IPTC, best of {args.repeat}, one thread")
    print(f"  decode (open_image + preprocess): {best['decode'] * 1e3:8.3f} ms/photo")
    print(f"  facts (Image.open + read_facts):  {best['facts'] * 1e3:8.3f} ms/photo")
    print(f"  decode + facts:                   {best['both'] * 1e3:8.3f} ms/photo")
    print(f"  ratio (decode + facts) / decode:  {best['both'] / best['decode']:8.3f}")
    print(f"  facts / decode:                   {best['facts'] / best['decode']:8.3f}")
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
