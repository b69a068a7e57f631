"""What long commands show while they work, on stderr: progress bars and phase spinners
(rich draws them, fits them to the terminal's width and keeps printed lines above them).

On a terminal a bar is redrawn in place and a phase longer than a second shows a spinner, then
one line with its time when it is done (a phase that fails shows nothing more: the error says
its own one line); elsewhere (a log, a pipe) the commands show neither.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # rich loads with the first bar or spinner, not with every command
    from rich.console import Console
    from rich.progress import Progress

    from indexer import IndexRebuild
    from train import TrainProgress

# A phase quicker than this shows nothing.
PHASE_AFTER = 1.0


def clock(seconds: float) -> str:
    """`1:02` or `1:02:03`."""
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def console(stream: TextIO, *, terminal: bool | None = None) -> Console:
    """A rich console on `stream`; `terminal` forces (or denies) live drawing."""
    from rich.console import Console

    return Console(file=stream, force_terminal=terminal, highlight=False, soft_wrap=False)


class LineBar:
    """`[━━━━━    ] text`, redrawn in place at most every `min_interval` seconds."""

    def __init__(
        self,
        stream: TextIO,
        *,
        width: int = 28,
        min_interval: float = 0.2,
        terminal: bool | None = None,
    ) -> None:
        self.stream = stream
        self.width = width
        self.min_interval = min_interval
        self.console = console(stream, terminal=terminal)
        self._start = time.monotonic()
        self._last_draw = float("-inf")  # the first call always draws
        self._progress: Progress | None = None
        self._task = 0

    def due(self, final: bool = False) -> bool:
        now = time.monotonic()
        if not final and now - self._last_draw < self.min_interval:
            return False
        self._last_draw = now
        return True

    def elapsed(self) -> float:
        return max(time.monotonic() - self._start, 1e-9)

    def draw(self, done: int, total: int, text: str) -> None:
        if self._progress is None:
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(
                BarColumn(bar_width=self.width),
                TextColumn("{task.fields[text]}"),
                console=self.console,
                auto_refresh=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=total, text=text)
        self._progress.update(self._task, completed=done, total=total, text=text, refresh=True)

    def print(self, line: str) -> None:
        """A line kept above the bar."""
        if self._progress is not None:
            self._progress.console.print(line, markup=False)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line so what follows starts on a fresh one."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class ProgressBar(LineBar):
    """Files, images/s and ETA: the progress callback of `indexer.index_photos` and eval."""

    def __call__(self, done: int, total: int) -> None:
        if not self.due(final=done >= total):
            return
        rate = done / self.elapsed()
        eta = clock((total - done) / rate) if rate > 0 and done < total else "--:--"
        self.draw(done, total, f"{done}/{total} files  {rate:5.1f} img/s  ETA {eta}")


class FactsBar(LineBar):
    """Reading the facts of photos indexed before they were stored (`index`'s
    `on_facts_backfill`): drawn only once it has taken `after` seconds, so a small library
    shows nothing; `interrupts`, the files bar still on the line, is ended first."""

    def __init__(
        self, stream: TextIO, *, after: float = 1.0, interrupts: LineBar | None = None, **kwargs
    ) -> None:
        super().__init__(stream, **kwargs)
        self.after = after
        self.interrupts = interrupts

    def __call__(self, done: int, total: int) -> None:
        if done == 0:
            self._start = time.monotonic()
        shown = self._progress is not None
        if not shown and (done >= total or self.elapsed() < self.after):
            return
        if done >= total or self.due():
            if not shown and self.interrupts is not None:
                self.interrupts.close()
            self.draw(done, total, f"reading the facts of indexed photos: {done:,}/{total:,}")
        if done >= total:
            self.close()


class TrainBar(LineBar):
    """Epoch, step, loss, images/s, ETA; one kept line per finished epoch."""

    def __init__(self, stream: TextIO, *, width: int = 24, **kwargs: object) -> None:
        super().__init__(stream, width=width, **kwargs)  # type: ignore[arg-type]

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
            self.print(f"  epoch {p.epoch}/{p.epochs}: loss {p.loss:.4f}{val}")


class RebuildBar(LineBar):
    """An index rebuilt because the library outgrew it (`index`'s `on_index_rebuild`): a bar
    of vectors added on a terminal, else a line when it starts and one when it is done.
    `interrupts`, a bar already on the line (the files bar), is ended first."""

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool,
        interrupts: LineBar | None = None,
        prefix: str = "",
        terminal: bool | None = None,
    ) -> None:
        super().__init__(stream, terminal=terminal)
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
                self.print(text)
            return
        if event.done:
            text = f"{what}: done in {clock(time.monotonic() - self._began)}"
            if self.live:
                self.draw(1, 1, text)
                self.close()
            else:
                self.print(text)
        elif self.live and self.due():
            self.draw(event.added, max(event.photos, 1), f"{what}: {event.added:,} added")


class PhaseReporter:
    """Shows `koclip.phases` phases on `stream`: nothing for a phase quicker than `after`
    seconds; then a spinner with its text on a terminal (one spinner: a phase inside another
    replaces the text until it ends); and a line with the time taken when it is done (not when
    it failed: the error's own line follows)."""

    def __init__(
        self,
        stream: TextIO,
        *,
        after: float = PHASE_AFTER,
        prefix: str = "koclip-search: ",
        terminal: bool | None = None,
    ) -> None:
        self.console = console(stream, terminal=terminal)
        self.stream = stream
        self.after = after
        self.prefix = prefix
        self._lock = threading.Lock()
        self._shown: list[str] = []  # the texts on show, outermost first
        self._status = None

    def _show(self, text: str) -> None:
        line = f"{self.prefix}{text}..."
        if not self.console.is_terminal:
            pass  # a log gets the one line with the time, when the phase is done
        elif self._status is None:
            self._status = self.console.status(line)
            self._status.start()
        else:
            self._status.update(line)
        self._shown.append(text)

    def _end(self, text: str, took: float, failed: bool) -> None:
        self._shown.remove(text)
        if self._status is not None:
            if self._shown:
                self._status.update(f"{self.prefix}{self._shown[-1]}...")
            else:
                self._status.stop()
                self._status = None
        if not failed:  # a failure says its own one line
            self.console.print(f"{self.prefix}{text}: done in {took:.1f} s", markup=False)

    @contextlib.contextmanager
    def __call__(self, text: str) -> Iterator[None]:
        start = time.monotonic()
        state = {"shown": False, "done": False}

        def show() -> None:
            with self._lock:
                if not state["done"]:
                    state["shown"] = True
                    self._show(text)

        timer = threading.Timer(self.after, show)
        timer.daemon = True
        timer.start()
        failed = True
        try:
            yield
            failed = False
        finally:
            with self._lock:
                state["done"] = True
                timer.cancel()
                if state["shown"]:
                    self._end(text, time.monotonic() - start, failed)


@contextlib.contextmanager
def phases_shown(
    stream: TextIO, *, terminal: bool | None = None, **kwargs: object
) -> Iterator[None]:
    """Show `koclip.phases` on `stream` while the block runs, when it is a terminal (a person
    waiting; a log or a pipe gets only the command's own output, and its errors one line)."""
    from koclip.phases import set_reporter

    if terminal is None:
        terminal = bool(getattr(stream, "isatty", lambda: False)())
    if not terminal:
        yield
        return
    previous = set_reporter(PhaseReporter(stream, terminal=True, **kwargs))  # type: ignore[arg-type]
    try:
        yield
    finally:
        set_reporter(previous)
