"""Query-understanding benchmark (issue 21): speed per query and accuracy on the phrasing set.

    .venv/bin/python bench/understand.py                 # ~3,000 places, a few seconds
    .venv/bin/python bench/understand.py --places 20000  # a bigger library
    .venv/bin/python bench/understand.py --cold 3000     # + one-shot `search` processes (~1 min)

The vocabulary is the accuracy set's library (search/understand/data/vocabulary.json) plus
generated Korean administrative names (시도 / 시군구 / 읍면동) up to --places places at every
level, so lookups run against a library-sized table. Each query of the set is understood
--rounds times; the timings are wall-clock p50/p99 of single calls. Accuracy is the share of
the set read exactly (dates, places, camera and the rest), with every miss listed.

--cold N indexes N small photos with the tiny test model (or --cold-model), gives them places
(the generated names), cameras and their words, and times one-shot `koclip-search search`
processes, each with a text never asked before (so the text tower is loaded and run), with
understanding and the words' lookup (the default) and with --literal (search as it was before
them), alternately; the target is the default within 10% of --literal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.errors import DateError  # noqa: E402
from search.understand import Vocabulary, understand  # noqa: E402
from search.understand.testing import (  # noqa: E402
    KNOWN_MISSES,
    Case,
    load_cases,
    load_vocabulary,
    miss,
)

_SYLLABLES = "가나다라마바사아자차카타파하거너더러머버서어저처커터퍼허고노도로모보소오조초"


def synthetic_rows(count: int, seed: int = 0) -> list[tuple[tuple[str, ...], int]]:
    """Made-up 시도 / 시군구 / 읍면동 paths: about `count` places over all levels."""
    rng = random.Random(seed)

    def name(suffix: str) -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3)))) + suffix

    rows = []
    per_province, per_city = 12, 10
    provinces = max(1, count // (per_province * (per_city + 1) + 1))
    for _ in range(provinces):
        province = name(rng.choice(("도", "광역시")))
        for _ in range(per_province):
            city = name(rng.choice(("시", "군", "구")))
            for _ in range(per_city):
                rows.append(
                    ((province, city, name(rng.choice(("읍", "면", "동")))), rng.randint(1, 50))
                )
    return rows


def category(case: Case) -> str:
    if case.error:
        return "bad date"
    kinds = [k for k, v in (("date", case.after or case.before), ("place", case.places),
                            ("camera", case.camera)) if v]  # fmt: skip
    return " + ".join(kinds) if kinds else "neither"


# -- cold one-shot searches ---------------------------------------------------------------------

COLD_QUERIES = ["작년 여름 제주 바다", "바닷가에서 노는 강아지", "서울 강남구 카페", "가족 사진"]
CAMERAS = [("Apple", "iPhone 13 Pro"), ("SAMSUNG", "SM-S918N"), ("Canon", "Canon EOS R5")]


def cold_library(work: Path, count: int, model: Path) -> Path:
    """`count` small photos indexed with `model`, with places, cameras and words (made once)."""
    import numpy as np
    from PIL import Image

    import db
    from db.testing import Facts, set_facts
    from indexer import IndexOptions, index_photos

    photos = work / f"photos-{count}"
    library = db.default_library_dir(photos)
    if (library / "manifest.json").exists():
        return library
    rng = np.random.default_rng(0)
    for i in range(count):
        path = photos / f"{2015 + i % 10}" / f"IMG_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(colour).resize((32, 24)).save(path, quality=80)
    index_photos(photos, IndexOptions(model=str(model), workers=2, batch_size=64))
    places = [("제주특별자치도", "서귀포시", "성산읍"), ("서울특별시", "강남구", "역삼동")]
    places += [names for names, _ in synthetic_rows(500)]

    def facts_of(_rel: str) -> Facts:  # a random place and camera
        names = places[int(rng.integers(len(places)))]
        make, model_name = CAMERAS[int(rng.integers(len(CAMERAS)))]
        return names, make, model_name, ()

    set_facts(library, facts_of)
    return library


def cold(count: int, runs: int, model: Path | None) -> None:
    """p50 wall time of one-shot searches with and without understanding (see the docs)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
        env.setdefault("KOCLIP_CACHE_DIR", str(work / "cache"))
        os.environ.update(env)
        if model is None:
            from koclip.testing import build_tiny_checkpoint

            model = build_tiny_checkpoint(work / "tiny", vision="clip", fmt="safetensors")
        library = cold_library(work, count, model)
        cli = [sys.executable, "-c", "from cli import main; main()"]
        times: dict[str, list[float]] = {"understood": [], "literal": []}
        nonce = f"{time.time_ns() % 10**9:x}"
        for n in range(runs + 1):  # the first round warms the OS's file cache, not counted
            for query in COLD_QUERIES:
                for mode in ("literal", "understood"):
                    text = f"{query} {mode[0]}{nonce}{n}"  # never asked before: the tower runs
                    cmd = [*cli, "search", *text.split(), "--library", str(library), "--paths"]
                    if mode == "literal":
                        cmd.append("--literal")
                    t0 = time.perf_counter()
                    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
                    if n:
                        times[mode].append(time.perf_counter() - t0)
    literal, understood = (statistics.median(times[m]) for m in ("literal", "understood"))
    print(f"\ncold one-shot `search` on {count:,} photos with places, cameras and words "
          f"({runs} x {len(COLD_QUERIES)} queries each, p50, {os.cpu_count()} CPUs):")  # fmt: skip
    print(f"  --literal (no understanding, no words): {literal:.2f} s")
    print(f"  default (understood + words fused):     {understood:.2f} s "
          f"({(understood / literal - 1) * 100:+.1f}%, target within +10%)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--places", type=int, default=3000, help="places in the vocabulary")
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per query")
    parser.add_argument(
        "--cold", type=int, default=0, help="photos for one-shot searches (0: none)"
    )
    parser.add_argument("--cold-runs", type=int, default=3, help="rounds of one-shot searches")
    parser.add_argument("--cold-model", type=Path, help="checkpoint (default: the tiny test model)")
    args = parser.parse_args()

    today, base = load_vocabulary()
    slowest: list[tuple[float, str]] = []
    cases = load_cases()
    raw = json.loads((REPO / "search/understand/data/vocabulary.json").read_text("utf-8"))
    rows = [(tuple(n), c) for n, c in raw["places"]] + synthetic_rows(args.places)
    start = time.perf_counter()
    vocabulary = Vocabulary.build(places=rows, cameras=[tuple(r) for r in raw["cameras"]])
    build_ms = (time.perf_counter() - start) * 1000
    print(f"vocabulary: {len(vocabulary.places)} places, {len(vocabulary.cameras)} cameras, "
          f"built in {build_ms:.1f} ms")  # fmt: skip

    timings = []
    for _ in range(args.rounds):
        for case in cases:
            t0 = time.perf_counter()
            with contextlib.suppress(DateError):  # bad dates raise by design, timed all the same
                understand(case.query, today=today, vocabulary=vocabulary)
            timings.append((time.perf_counter() - t0) * 1000)
            slowest.append((timings[-1], case.query))
    timings.sort()
    p50 = statistics.median(timings)
    p99 = timings[int(len(timings) * 0.99) - 1]
    print(f"understand(): p50 {p50:.3f} ms, p99 {p99:.3f} ms over {len(timings)} calls "
          f"(target: p50 <= 5 ms)")  # fmt: skip
    worst = max(slowest)
    print(f"slowest call: {worst[0]:.3f} ms ({worst[1]!r})")

    # Accuracy against the set's own library (the synthetic names do not change the answers).
    totals: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    misses = []
    for case in cases:
        group = category(case)
        totals[group] += 1
        problem = miss(case, today, base)
        if problem is None:
            hits[group] += 1
        else:
            misses.append((case.query, problem, KNOWN_MISSES.get(case.query, "")))
    print(f"\n{'phrasings':<24}{'read right':>12}{'of':>6}{'accuracy':>10}")
    for group in sorted(totals, key=lambda g: -totals[g]):
        print(f"{group:<24}{hits[group]:>12}{totals[group]:>6}{hits[group] / totals[group]:>10.1%}")
    total, right = sum(totals.values()), sum(hits.values())
    print(f"{'all':<24}{right:>12}{total:>6}{right / total:>10.1%}")
    known = sum(1 for m in misses if m[2])
    print(f"{'in scope':<24}{right:>12}{total - known:>6}{right / (total - known):>10.1%}"
          f"   (the {known} known misses left out)")  # fmt: skip
    print(f"\nmisses: {len(misses)}")
    for query, problem, reason in misses:
        print(f"  {query!r}: {problem}" + (f" (known: {reason})" if reason else ""))
    if args.cold:
        cold(args.cold, args.cold_runs, args.cold_model)


if __name__ == "__main__":
    main()
