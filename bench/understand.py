"""Query-understanding benchmark (issue 21): speed per query and accuracy on the phrasing set.

    .venv/bin/python bench/understand.py                 # ~3,000 places, a few seconds
    .venv/bin/python bench/understand.py --places 20000  # a bigger library

The vocabulary is the accuracy set's library (tests/data/understand_vocabulary.json) plus
generated Korean administrative names (시도 / 시군구 / 읍면동) up to --places places at every
level, so lookups run against a library-sized table. Each query of the set is understood
--rounds times; the timings are wall-clock p50/p99 of single calls. Accuracy is the share of
the set read exactly (dates, places, camera and the rest), with every miss listed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from search.errors import DateError  # noqa: E402
from search.understand import Vocabulary, understand  # noqa: E402
from tests.understand_fixtures import (  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--places", type=int, default=3000, help="places in the vocabulary")
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per query")
    args = parser.parse_args()

    today, base = load_vocabulary()
    slowest: list[tuple[float, str]] = []
    cases = load_cases()
    raw = json.loads((REPO / "tests/data/understand_vocabulary.json").read_text("utf-8"))
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


if __name__ == "__main__":
    main()
