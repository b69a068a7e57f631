"""The relevance cutoff that adapts to the query: which photos stand out from the library.

`adaptive_cutoff(scores)` takes one query's cosine scores against every photo of the library
and returns the score from which photos are kept (`--threshold auto`). No fixed number is tied
to a model's scale: the rule reads the shape of the top of the query's own score distribution.

The rule (`TOP_BAND` and `MIN_DENSITY` were chosen on bench/cutoff.py's measurements):

- The typical photo scores the median, the best one the maximum. Photos in the top
  `TOP_BAND` (15 %) of that span are kept.
- They are kept only if they stand out: the kept band must be a peak or a plateau, not the
  thin end of a tail. Its photos per unit of score must be at least `MIN_DENSITY` (3/4) of
  those in the three band-widths just below it. Where relevant photos gather at the top (a
  trained model, a query with an answer), the top band is crowded; where the best scores only
  thin out (an untrained model, a query the library has no answer to), it is not, and nothing
  is kept.

Nothing standing out gives `threshold=None` and keeps nothing: under a date sort, keeping all
would answer the query with the whole library by date, as if it had not been asked; an empty
answer with its `how` says so, and `--threshold none` is there for the whole list. A library of
fewer than `MIN_PHOTOS` photos cannot be judged: the cutoff steps aside and keeps them all.

Both steps use only the median, the maximum, differences and counts, so the kept set does not
change when every score is multiplied by a positive number or shifted: no model's scale is
built in. Measured by bench/cutoff.py on the digits models (300 held-out scans, 40 queries;
precision and recall of the kept set, averaged per digit):

- trained (the tests' recipe): precision 0.88, recall 0.69, no query keeps nothing;
- reseeded (same recipe, other seed; scores -0.66..0.81 against -0.75..0.84): 0.89, 0.63;
- weaker (4 epochs, precision@10 0.70): keeps only where sure: 0.80, 0.18, 29 of 40 keep nothing;
- untrained: keeps nothing for any of the 40 queries.

The alternatives measured (`--candidates`): a robust z-score (median/MAD) kept nothing on the
trained models, whose unrelated digits spread as widely as the right one stands out; Otsu's
threshold and a two-Gaussian mixture split near the middle (precision 0.21); the largest gap in
the top 100 was less precise (0.75) and always kept a photo or two on the untrained model; the
margin over neutral prompts ("숫자", "손으로 쓴 숫자", ...) kept far too much (precision 0.25),
so the function takes no background.

Below a thousand photos the few best scores of pure noise can pass for a small peak: a handful
may be kept there (tests/test_cutoff.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from search.errors import QueryError

# Photos scoring in this top fraction of the span from the median to the best are kept...
TOP_BAND = 0.15
# ...when the kept band holds at least this fraction of the photos per unit of score of the
# BELOW bands of the same width just under it (otherwise the top is a tail: nothing stands out).
MIN_DENSITY = 0.75
BELOW = 3
# Fewer photos than this cannot be judged against each other: all are kept.
MIN_PHOTOS = 8


@dataclass(frozen=True)
class Cutoff:
    """Where one query's scores are cut.

    `threshold`: photos scoring at least this are kept (it is the lowest kept score, so equal
    scores fall on the same side); None when nothing stands out, and then none is kept.
    `kept`: how many of the scores given are kept. `how`: one line saying why, for --json.
    """

    threshold: float | None
    kept: int
    how: str

    def keeps(self, score: float) -> bool:
        """Whether a photo of this score is kept."""
        return self.threshold is not None and score >= self.threshold


def adaptive_cutoff(scores: np.ndarray) -> Cutoff:
    """The cutoff for one query given its scores against every photo of the library.

    `scores` is one score per photo (any order; cosine or any affine change of it). Scores that
    are not finite are left out (and not counted in `kept`). Deterministic, and O(n): about a
    millisecond for 100k photos.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1:
        raise QueryError(f"the cutoff needs one score per photo, not an array of shape {x.shape}")
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return Cutoff(None, 0, "no photos to cut")
    if n < MIN_PHOTOS:
        return Cutoff(
            float(x.min()), n, f"all {n} kept: fewer than {MIN_PHOTOS} photos cannot be judged"
        )
    median = float(np.median(x))
    best = float(x.max())
    span = best - median
    if not span > 8 * np.finfo(np.float64).eps * max(abs(best), abs(median)):
        return Cutoff(None, 0, "nothing stands out: the best scores are the typical ones")
    cut = best - TOP_BAND * span
    width = best - cut
    in_band = int(np.count_nonzero(x >= cut))
    below = int(np.count_nonzero((x < cut) & (x >= cut - BELOW * width)))
    if in_band * BELOW < MIN_DENSITY * below:
        return Cutoff(
            None,
            0,
            f"nothing stands out: the best scores thin out like a tail ({in_band} in the top "
            f"{TOP_BAND:.0%} of the span from the median to the best, {below} in the "
            f"{BELOW} bands below)",
        )
    threshold = float(x[x >= cut].min())
    return Cutoff(
        threshold,
        in_band,
        f"{in_band} of {n} stand out: the top {TOP_BAND:.0%} of the span from the median "
        f"score to the best",
    )
