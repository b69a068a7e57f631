"""What reading a photo's facts adds to the indexer's per-photo work, same run.

    .venv/bin/python bench/facts.py                  # 60 photos, best of 5
    .venv/bin/python bench/facts.py --n 200 --repeat 7

Generated 1024x768 JPEGs (smooth colours with grain, quality 90) carrying EXIF (date, offset,
make, model, lens, GPS), an XMP packet (dc:subject, dc:description) and IPTC keywords and
caption. Rows, per photo, on one thread:

* decode: what the load stage does to pixels today: `open_image` (open, JPEG draft, decode,
  orient, RGB) + `preprocess` (resize, crop, normalise).
* facts: `Image.open` (header only) + `indexer.facts.read_facts` on the opened image.
* decode + facts: both, as the load stage would run them: `read_facts` on the decoded image
  `open_image` returns (its `info` keeps the EXIF, XMP and IPTC bytes): no second open.
* decode + read_metadata (today): what the load stage does now besides hashing and
  fingerprints: the decode, then `indexer.load.read_metadata` opens the file again for the
  size and EXIF date. `read_facts` reads that date too, so "decode + facts / today" is the
  change if the integration drops that second open (the size is the decoded image's).
* decode + read_header (the indexer): what the load stage does since facts are stored: the
  decode, then `indexer.load.read_header` opens the header once for the size (the decoded
  image is drafted smaller) and reads the facts there, the date among them.

The ratio (decode + facts) / decode is the cost of facts at index time (the target is <= 1.05,
before the encoder's share, which only makes it smaller). Per photo the variants alternate and
each keeps its best of `--repeat`; other processes on the machine still slow every row.
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
    from indexer.testing_facts import (
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


def once(path: Path, what: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one variant on one photo."""
    from PIL import Image

    from indexer.facts import read_facts
    from indexer.load import read_header, read_metadata
    from koclip.images.preprocess import open_image, preprocess

    start, cpu = time.perf_counter(), time.process_time()
    if what == "facts":
        with Image.open(path) as image:
            facts = read_facts(image)
        assert facts.has_position and not facts.problems
    elif what == "decode":
        preprocess(open_image(path, draft=True))
    elif what == "today":
        preprocess(open_image(path, draft=True))
        read_metadata(str(path))
    elif what == "indexer":
        preprocess(open_image(path, draft=True))
        _, _, facts = read_header(str(path))
        assert facts.has_position and facts.keywords and not facts.problems
    else:
        image = open_image(path, draft=True)
        facts = read_facts(image)
        assert facts.has_position and facts.keywords and not facts.problems
        preprocess(image)
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_photos(Path(tmp), args.n)
        for path in paths[:5]:
            once(path, "both")  # warm the imports and the page cache
        # Per photo, the variants alternate and each keeps its best of `repeat`: a burst of
        # load from other processes then costs one sample, not a whole pass.
        walls = {
            what: [float("inf")] * len(paths)
            for what in ("decode", "facts", "both", "today", "indexer")
        }
        cpus = {what: [float("inf")] * len(paths) for what in walls}
        for _ in range(args.repeat):
            for i, path in enumerate(paths):
                for what in walls:
                    wall, cpu = once(path, what)
                    walls[what][i] = min(walls[what][i], wall)
                    cpus[what][i] = min(cpus[what][i], cpu)
    wall = {what: sum(t) / len(t) for what, t in walls.items()}
    cpu = {what: sum(t) / len(t) for what, t in cpus.items()}
    print(f"{args.n} JPEGs 1024x768 with EXIF+GPS+XMP+IPTC, best of {args.repeat}, one thread")
    print("                                     wall ms/photo   CPU ms/photo")
    for what, label in (
        ("decode", "decode (open_image + preprocess)"),
        ("facts", "facts (Image.open + read_facts)"),
        ("both", "decode + facts"),
        ("today", "decode + read_metadata (today)"),
        ("indexer", "decode + read_header (indexer)"),
    ):
        print(f"  {label:33s}  {wall[what] * 1e3:12.3f}  {cpu[what] * 1e3:13.3f}")
    for label, a, b in (
        ("ratio (decode + facts) / decode", "both", "decode"),
        ("facts / decode", "facts", "decode"),
        ("decode + facts / today", "both", "today"),
        ("indexer / today", "indexer", "today"),
    ):
        print(f"  {label:33s}  {wall[a] / wall[b]:12.3f}  {cpu[a] / cpu[b]:13.3f}")
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
