"""Terminal progress bars for long commands: one line redrawn in place on stderr."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from indexer import IndexRebuild
    from train import TrainProgress


def clock(seconds: float) -> str:
    """`1:02` or `1:02:03`."""
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class LineBar:
    """`[####....] text`, redrawn at most every `min_interval` seconds."""

    def __init__(self, stream: TextIO, *, width: int = 28, min_interval: float = 0.2) -> None:
        self.stream = stream
        self.width = width
        self.min_interval = min_interval
        self._start = time.monotonic()
        self._last_draw = float("-inf")  # the first call always draws
        self._drawn = False

    def due(self, final: bool = False) -> bool:
        now = time.monotonic()
        if not final and now - self._last_draw < self.min_interval:
            return False
        self._last_draw = now
        return True

    def elapsed(self) -> float:
        return max(time.monotonic() - self._start, 1e-9)

    def draw(self, done: int, total: int, text: str) -> None:
        filled = self.width * done // total if total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {text} ")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line so what follows starts on a fresh one."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


class ProgressBar(LineBar):
    """Files, images/s and ETA: the progress callback of `indexer.index_photos` and eval."""

    def __call__(self, done: int, total: int) -> None:
        if not self.due(final=done >= total):
            return
        rate = done / self.elapsed()
        eta = clock((total - done) / rate) if rate > 0 and done < total else "--:--"
        self.draw(done, total, f"{done}/{total} files  {rate:5.1f} img/s  ETA {eta}")


class TrainBar(LineBar):
    """Epoch, step, loss, images/s, ETA; one kept line per finished epoch."""

    def __init__(self, stream: TextIO, *, width: int = 24, min_interval: float = 0.2) -> None:
        super().__init__(stream, width=width, min_interval=min_interval)

    def __call__(self, p: TrainProgress) -> None:
        """Progress callback for `train.train`."""
        if not self.due(final=p.epoch_done):
            return
        eta = clock(p.seconds_left) if p.seconds_left is not None else "--:--"
        self.draw(
            p.step,
            max(p.total_steps, 1),
            f"epoch {p.epoch}/{p.epochs}  step {p.step}/{p.total_steps}  "
            f"loss {p.loss:.4f}  {p.images_per_sec:5.1f} img/s  ETA {eta}",
        )
        if p.epoch_done:
            val = f", validation mean recall {100 * p.validation.mean:.1f}" if p.validation else ""
            self.stream.write(f"\n  epoch {p.epoch}/{p.epochs}: loss {p.loss:.4f}{val}\n")
            self.stream.flush()
            self._drawn = False


class RebuildBar(LineBar):
    """An index rebuilt because the library outgrew it (`index`'s `on_index_rebuild`): a bar
    of vectors added on a terminal, else a line when it starts and one when it is done.
    `interrupts`, a bar already on the line (the files bar), is ended first."""

    def __init__(
        self, stream: TextIO, *, live: bool, interrupts: LineBar | None = None, prefix: str = ""
    ) -> None:
        super().__init__(stream)
        self.live = live
        self.interrupts = interrupts
        self.prefix = prefix
        self._began = 0.0

    def __call__(self, event: IndexRebuild) -> None:
        what = f"{self.prefix}index: {event.describe()}"
        if event.added is None:
            self._began = time.monotonic()
            if self.interrupts is not None:
                self.interrupts.close()
            text = f"{what}: training on a sample of the stored vectors"
            if self.live:
                self.draw(0, 1, text)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()
            return
        if event.done:
            text = f"{what}: done in {clock(time.monotonic() - self._began)}"
            if self.live:
                self.draw(1, 1, text)
                self.close()
            else:
                self.stream.write(text + "\n")
                self.stream.flush()
        elif self.live and self.due():
            self.draw(event.added, max(event.photos, 1), f"{what}: {event.added:,} added")
