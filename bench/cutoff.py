"""How well the adaptive relevance cutoff (`search.cutoff`) keeps the right photos.

    python bench/cutoff.py                          # build everything in a temporary folder
    python bench/cutoff.py --work /tmp/cutoff-bench # keep data, models, libraries for a rerun
    python bench/cutoff.py --work /tmp/cutoff-bench --candidates   # the other rules too

Builds what tests/test_digits_e2e.py builds (koclip.testing_digits): 600 captioned training
scans, 300 held-out scans (30 a digit) indexed by the real indexer, and four models:

- trained:   koclip.testing_digits.TRAIN_RECIPE, the tests' recipe (10 epochs, lr 4e-3, seed 0);
- reseeded:  the same recipe from other initial weights, other batches (seed 1): as good a
             reader, with scores of another scale and spread;
- weaker:    seed 1 again, trained less (4 epochs, lr 2e-3): a worse reader (precision@10
             0.70 against 0.95), to see what the cutoff keeps when the model is unsure;
- untrained: the fresh random model (nothing is relevant: the cutoff should keep little).

Every digit's 4 phrasings are encoded by `search.Searcher`'s query encoder with the prompt (as a
search does by default) and scored against every stored vector of the library; the cutoff is
applied to those 300 scores. Prints, per model, precision and recall of the kept set per digit
(averaged over its phrasings that kept something; "-" where none did), the photos kept, how
many of the 40 queries kept nothing, and the time of the rule on 100k scores. `--candidates`
adds the rules measured and not chosen: a robust z-score (median/MAD), Otsu's threshold, a
two-Gaussian mixture, the largest gap in the top 100, and the margin over neutral prompts
(`NEUTRAL`, the background a caller could encode once per library).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from koclip.testing_digits import (  # noqa: E402
    HELD_OUT_PER_DIGIT,
    TRAIN_RECIPE,
    phrasings,
    untrained_checkpoint,
    write_digits,
)
from search.cutoff import adaptive_cutoff  # noqa: E402

# Prompts that name no digit: what a photo scores for "some digit" (the background candidates).
NEUTRAL = ["숫자", "손으로 쓴 숫자", "손으로 쓴", "이것"]
Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (scores, background) -> kept mask

# name -> (seed of the initial weights and of training, epochs, learning rate); None: untrained.
# "trained" is TRAIN_RECIPE as it is; the others change only these three.
MODELS: dict[str, tuple[int, int, float] | None] = {
    "trained": (TRAIN_RECIPE["seed"], TRAIN_RECIPE["epochs"], TRAIN_RECIPE["learning_rate"]),
    "reseeded": (1, TRAIN_RECIPE["epochs"], TRAIN_RECIPE["learning_rate"]),
    "weaker": (1, 4, 2e-3),
    "untrained": None,
}


@dataclass
class Scores:
    """One model's query scores over its library."""

    queries: list[tuple[int, str]]  # (digit, phrasing)
    scores: np.ndarray  # (queries, photos) cosine scores
    labels: np.ndarray  # (photos,) the digit of each photo
    background: np.ndarray  # (NEUTRAL, photos) scores of the neutral prompts


def build(work: Path) -> dict[str, tuple[Path, dict[str, int]]]:
    """name -> (library, labels), building whatever `work` does not hold yet."""
    from indexer import IndexOptions, index_photos
    from train import TrainOptions, train

    if (work / "photos").is_dir():
        import json

        labels = json.loads((work / "labels.json").read_text(encoding="utf-8"))
        digits_photos, captions, train_dir = (
            work / "photos",
            work / "captions.jsonl",
            work / "train",
        )
    else:
        import json

        digits = write_digits(work)
        labels = digits.labels
        (work / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
        digits_photos, captions, train_dir = digits.photos, digits.captions, digits.train_dir
    out = {}
    for name, recipe in MODELS.items():
        library = work / f"lib-{name}"
        if not (library / "manifest.json").exists():
            seed = 0 if recipe is None else recipe[0]
            start = untrained_checkpoint(work / f"untrained-{seed}", seed)
            model = start
            if recipe is not None:
                seed, epochs, lr = recipe
                model = work / f"model-{name}"
                knobs = {**TRAIN_RECIPE, "epochs": epochs, "learning_rate": lr, "seed": seed}
                options = TrainOptions(**knobs, workers=2)
                t0 = time.perf_counter()
                summary = train(captions, train_dir, start, model, options)
                print(
                    f"trained {name}: {summary.steps} steps in {time.perf_counter() - t0:.0f} s,"
                    f" loss {summary.history[0].loss:.3f} -> {summary.history[-1].loss:.3f}",
                    file=sys.stderr,
                )
            index_photos(
                digits_photos,
                IndexOptions(library=library, model=str(model), workers=2, batch_size=32),
            )
        out[name] = (library, labels)
    return out


def query_scores(library: Path, labels: dict[str, int]) -> Scores:
    """Every digit's phrasings, encoded as Searcher encodes a text query, against every photo."""
    from db import embeddings, photos
    from search import Searcher

    queries = [(d, q) for d in range(10) for q in phrasings(d)]
    with Searcher(library) as searcher:
        vectors = searcher.encoder.texts([q for _, q in queries], prompt=True)
        neutral = searcher.encoder.texts(NEUTRAL, prompt=True)
        ids_all, vecs_all = [], []
        with searcher.library.session() as s, s.begin():
            for ids, vecs in embeddings.iter_embeddings(s):
                ids_all.append(ids)
                vecs_all.append(vecs)
            ids = np.concatenate(ids_all)
            rows = photos.photos_by_id(s, ids)
            truth = np.array([labels[Path(rows[int(i)].path).name] for i in ids])
        stored = np.concatenate(vecs_all).astype(np.float32)
    return Scores(queries, vectors @ stored.T, truth, neutral @ stored.T)


def measure(scores: Scores, rule: Rule) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per digit: mean precision (over phrasings that kept something: NaN if none did), mean
    recall, mean kept over its phrasings; how many queries kept nothing."""
    precs: list[list[float]] = [[] for _ in range(10)]
    rec, kept = np.zeros(10), np.zeros(10)
    empty = 0
    for (digit, _), row in zip(scores.queries, scores.scores, strict=True):
        mask = rule(row, scores.background)
        n = int(mask.sum())
        right = int(np.sum(scores.labels[mask] == digit))
        if n:
            precs[digit].append(right / n)
        rec[digit] += right / HELD_OUT_PER_DIGIT / 4
        kept[digit] += n / 4
        empty += n == 0
    prec = np.array([np.mean(p) if p else np.nan for p in precs])
    return prec, rec, kept, empty


def chosen(row: np.ndarray, background: np.ndarray) -> np.ndarray:
    cut = adaptive_cutoff(row)
    return row >= cut.threshold if cut.threshold is not None else np.zeros(row.shape, bool)


def precision_at_10(scores: Scores) -> float:
    """The ranking's own quality, without any cutoff: mean precision@10 over the 40 queries."""
    hits = [
        np.mean(scores.labels[np.argsort(-row, kind="stable")[:10]] == digit)
        for (digit, _), row in zip(scores.queries, scores.scores, strict=True)
    ]
    return float(np.mean(hits))


def table(name: str, scores: Scores, rules: dict[str, Rule]) -> None:
    print(
        f"\n## {name}: scores {scores.scores.min():.3f} .. {scores.scores.max():.3f},"
        f" ranking precision@10 {precision_at_10(scores):.2f}"
    )
    for rule_name, rule in rules.items():
        prec, rec, kept, empty = measure(scores, rule)
        print(f"\n{rule_name}")
        print("| digit | " + " | ".join(str(d) for d in range(10)) + " | mean |")
        print("| --- " * 12 + "|")
        for label, values in (("precision", prec), ("recall", rec), ("kept", kept)):
            digits = 1 if label == "kept" else 2
            cells = " | ".join("-" if np.isnan(v) else f"{v:.{digits}f}" for v in values)
            mean = np.nanmean(values) if not np.isnan(values).all() else np.nan
            print(f"| {label} | {cells} | {'-' if np.isnan(mean) else f'{mean:.{digits}f}'} |")
        print(f"queries that kept nothing: {empty} of {len(scores.queries)}")


def timing() -> float:
    """Median ms of the rule on 100k scores (a bulk of noise and a small relevant cluster)."""
    rng = np.random.default_rng(0)
    row = np.concatenate([rng.normal(0.2, 0.05, 99_700), rng.normal(0.45, 0.03, 300)])
    rng.shuffle(row)
    row = row.astype(np.float32)
    samples = []
    for _ in range(20):
        t0 = time.perf_counter()
        adaptive_cutoff(row)
        samples.append(time.perf_counter() - t0)
    return 1000 * float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="keep everything here (reused when present)")
    parser.add_argument("--candidates", action="store_true", help="also the rules not chosen")
    parser.add_argument("--save", type=Path, help="write the scores to this .npz")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        libraries = build(work)
        rules = {"adaptive_cutoff": chosen}
        if args.candidates:
            rules.update(CANDIDATES)
        saved = {}
        for name, (library, labels) in libraries.items():
            scores = query_scores(library, labels)
            saved[f"{name}_scores"], saved[f"{name}_labels"] = scores.scores, scores.labels
            saved[f"{name}_background"] = scores.background
            table(name, scores, rules)
        if args.save:
            np.savez(args.save, **saved)
    print(f"\nadaptive_cutoff on 100k scores: {timing():.2f} ms (median of 20)")


def robust_z(z: float) -> Rule:
    """Keep scores more than `z` robust deviations (1.4826 MAD) above the median."""

    def rule(row: np.ndarray, background: np.ndarray) -> np.ndarray:
        med = np.median(row)
        mad = 1.4826 * np.median(np.abs(row - med))
        return row > med + z * mad

    return rule


def otsu(row: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Otsu's threshold over a 256-bin histogram of the scores."""
    hist, edges = np.histogram(row, bins=256)
    p = hist / hist.sum()
    mids = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * mids)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1 - w0))
    cut = edges[int(np.nanargmax(between[:-1])) + 1]
    return row >= cut


def gmm2(row: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Two-component 1-D Gaussian mixture: keep what the upper component explains best."""
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(2, random_state=0).fit(row[:, None])
    upper = int(np.argmax(gm.means_[:, 0]))
    return gm.predict(row[:, None]) == upper


def largest_gap(top: int) -> Rule:
    """Cut at the largest gap between neighbouring scores among the `top` best."""

    def rule(row: np.ndarray, background: np.ndarray) -> np.ndarray:
        ranked = np.sort(row)[::-1][: top + 1]
        return row >= ranked[int(np.argmax(-np.diff(ranked)))]

    return rule


def margin(row: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Keep photos the query scores above every neutral prompt."""
    return row > background.max(axis=0)


def margin_z(z: float) -> Rule:
    """Robust z of the margin over the neutral prompts' mean (each photo's own offset removed)."""
    inner = robust_z(z)

    def rule(row: np.ndarray, background: np.ndarray) -> np.ndarray:
        return inner(row - background.mean(axis=0), background)

    return rule


CANDIDATES: dict[str, Rule] = {
    "robust z > 3": robust_z(3),
    "robust z > 4": robust_z(4),
    "robust z > 5": robust_z(5),
    "otsu": otsu,
    "gmm2": gmm2,
    "largest gap in top 100": largest_gap(100),
    "margin over neutral prompts": margin,
    "robust z > 4 of the margin": margin_z(4),
}

if __name__ == "__main__":
    main()
