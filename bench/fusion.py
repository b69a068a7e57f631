"""Does fusing the photos' words with the embedding ranking help, and can it hurt? (issue 21 §2)

    python bench/fusion.py                          # build everything in a temporary folder
    python bench/fusion.py --work /tmp/fusion-bench # keep data, models, libraries for a rerun

The held-out digits of koclip.testing_digits (300 real scans, 30 a digit) are indexed three
times, named three ways (koclip.testing_digit_names): "named" (손글씨_일곱_0007.png: the names
carry the answer), "random" (IMG_4821.png: they say nothing) and "misleading" (named for another
digit), each with two models: "trained" (tests/test_digits_e2e.py's recipe) and "untrained"
(near chance). Every digit's 4 phrasings are searched with `search.Searcher` (prompt on, as a
search runs by default), literally (the embedding ranking alone) and fused (reciprocal rank
fusion with the photos' words), and precision@10 is averaged over the 40 queries and over the
6 whose words a name can hold (손으로 쓴 숫자 하나/다섯/여섯/일곱/여덟/아홉: the other digits'
Korean names have one syllable, shorter than the words looked up).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from koclip.testing_digit_names import (  # noqa: E402
    QUERIES,
    SCHEMES,
    WORDY,
    K,
    name_digits,
    precision_at_k,
)
from koclip.testing_digits import Digits, write_digits  # noqa: E402

TRAINED = {"epochs": 10, "learning_rate": 4e-3, "seed": 0}  # tests/test_digits_e2e.py's recipe


def models(work: Path, digits) -> dict[str, Path]:
    """name -> checkpoint: the untrained one and the one trained from it (made once)."""
    from train import TrainOptions, train

    trained = work / "model-trained"
    if not (trained / "config.json").exists():
        options = TrainOptions(
            epochs=TRAINED["epochs"], batch_size=32, learning_rate=TRAINED["learning_rate"],
            weight_decay=0.01, warmup=0.1, max_length=16, prompt=True, seed=TRAINED["seed"],
            workers=2,
        )  # fmt: skip
        t0 = time.perf_counter()
        train(digits.captions, digits.train_dir, digits.untrained, trained, options)
        print(f"trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return {"trained": trained, "untrained": digits.untrained}


def library(work: Path, digits, scheme: str, model_name: str, model: Path):
    """(library, file name -> digit) of the scans named by `scheme`, indexed with `model`."""
    from indexer import IndexOptions, index_photos

    photos = work / f"photos-{scheme}"
    labels_file = work / f"labels-{scheme}.json"
    if labels_file.exists():
        labels = json.loads(labels_file.read_text(encoding="utf-8"))
    else:
        labels = name_digits(digits.photos, digits.labels, photos, scheme)
        labels_file.write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
    lib = work / f"lib-{model_name}-{scheme}"
    if not (lib / "manifest.json").exists():
        index_photos(photos, IndexOptions(library=lib, model=str(model), workers=2, batch_size=32))
    return lib, labels


def precision(lib: Path, labels: dict[str, int], literal: bool) -> dict[str, float]:
    from search import Searcher

    with Searcher(lib) as searcher:
        return precision_at_k(searcher, labels, literal=literal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, help="keep everything here (reused when present)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if (work / "photos").is_dir():
            digits = Digits(
                work, work / "captions.jsonl", work / "train", work / "photos",
                json.loads((work / "labels.json").read_text(encoding="utf-8")),
                work / "untrained",
            )  # fmt: skip
        else:
            digits = write_digits(work)
            (work / "labels.json").write_text(json.dumps(digits.labels), encoding="utf-8")
        rows = []
        for model_name, model in models(work, digits).items():
            for scheme in SCHEMES:
                lib, labels = library(work, digits, scheme, model_name, model)
                plain = precision(lib, labels, literal=True)
                fused = precision(lib, labels, literal=False)
                rows.append((model_name, scheme, plain, fused))
    print(f"precision@{K}: {len(QUERIES)} queries (all) and the {len(WORDY)} a name can answer")
    head = f"{'model':<10} {'names':<11} {'all: plain':>10} {'fused':>6} {'named q: plain':>15} {'fused':>6}"
    print(head)
    print("-" * len(head))
    for model_name, scheme, plain, fused in rows:
        wordy_plain = np.mean([plain[q] for q in WORDY])
        wordy_fused = np.mean([fused[q] for q in WORDY])
        print(
            f"{model_name:<10} {scheme:<11} {np.mean(list(plain.values())):>10.3f} "
            f"{np.mean(list(fused.values())):>6.3f} {wordy_plain:>15.3f} {wordy_fused:>6.3f}"
        )


if __name__ == "__main__":
    main()
