"""A small one-line progress bar (files, images/s, ETA) for a terminal."""

from __future__ import annotations

import time
from typing import TextIO


class ProgressBar:
    """Redraws `[####....] done/total files  12.3 img/s  ETA 1:02` in place on `stream`."""

    def __init__(self, stream: TextIO, *, width: int = 28, min_interval: float = 0.2) -> None:
        self.stream = stream
        self.width = width
        self.min_interval = min_interval
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        """Progress callback for `indexer.index_photos`."""
        now = time.monotonic()
        if done < total and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        elapsed = max(now - self._start, 1e-9)
        rate = done / elapsed
        filled = self.width * done // total if total else self.width
        eta = _clock((total - done) / rate) if rate > 0 and done < total else "--:--"
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} files  {rate:5.1f} img/s  ETA {eta} ")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line so what follows starts on a fresh one."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
