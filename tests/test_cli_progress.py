"""What long commands show while they work: the bars of `index`, `eval` and `train`, and the
phases of set-up work (koclip.phases) that take longer than a second."""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time

import pytest

from cli.progress import FactsBar, PhaseReporter, ProgressBar, TrainBar, clock, phases_shown
from koclip.phases import phase
from train import TrainProgress


def plain(text: str) -> str:
    """What the terminal shows at the end: escape codes dropped, each line's last redraw."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return "\n".join(line.split("\r")[-1] for line in text.split("\n"))


@contextlib.contextmanager
def reporting(reporter):
    from koclip.phases import set_reporter

    previous = set_reporter(reporter)
    try:
        yield
    finally:
        set_reporter(previous)


def test_commands_show_phases_on_a_terminal_only():
    """A log or a pipe (and so every test's captured stderr) gets no phase lines: an error
    stays one line there however long the model took to load."""
    log = io.StringIO()
    with phases_shown(log, after=0.01), phase("loading the model"):
        time.sleep(0.1)
    assert log.getvalue() == ""
    out = io.StringIO()
    with phases_shown(out, after=0.01, terminal=True), phase("loading the model"):
        time.sleep(0.1)
    assert "loading the model: done in " in out.getvalue()


def test_clock():
    assert clock(62) == "1:02" and clock(3723) == "1:02:03" and clock(0.4) == "0:00"


def test_train_bar_keeps_one_line_per_epoch():
    out = io.StringIO()
    bar = TrainBar(out, width=8, min_interval=0, terminal=True)
    bar(TrainProgress(1, 2, 1, 4, 2.5, 3.0, seconds_left=65))
    bar(TrainProgress(1, 2, 2, 4, 2.0, 3.0, seconds_left=30, epoch_done=True))
    bar(TrainProgress(2, 2, 3, 4, 1.5, 3.0))
    bar.close()
    text = out.getvalue()
    assert "epoch 1/2  step 2/4  loss 2.0000" in text and "ETA 1:05" in text
    shown = plain(text).splitlines()
    assert shown[0] == "  epoch 1/2: loss 2.0000"  # kept above the bar
    assert "epoch 2/2  step 3/4" in shown[1] and plain(text).endswith("\n")


def test_progress_bar_throttles_but_always_draws_the_end():
    out = io.StringIO()
    bar = ProgressBar(out, width=4, min_interval=3600, terminal=True)
    bar(1, 10)
    bar(2, 10)  # too soon: not drawn
    bar(10, 10)
    bar.close()
    text = out.getvalue()
    assert "1/10 files" in text and "2/10 files" not in text and "10/10 files" in text


def test_the_facts_backfill_shows_only_when_it_lasts_and_ends_the_files_bar():
    out = io.StringIO()
    quick = FactsBar(out, after=3600, min_interval=0, terminal=True)
    for done in (0, 2, 5):
        quick(done, 5)
    assert out.getvalue() == ""  # a small library: nothing shown

    files = ProgressBar(out, width=4, min_interval=0, terminal=True)
    files(3, 3)
    slow = FactsBar(out, after=0, min_interval=0, interrupts=files, terminal=True)
    for done in (0, 2, 5):
        slow(done, 5)
    text = plain(out.getvalue())
    assert "3/3 files" in text and "reading the facts of indexed photos: 2/5" in out.getvalue()
    assert text.splitlines()[-1].endswith("reading the facts of indexed photos: 5/5")
    assert files._progress is None and slow._progress is None  # both lines ended


def test_a_bar_fits_a_narrow_terminal():
    out = io.StringIO()
    bar = ProgressBar(out, width=10, min_interval=0, terminal=True)
    bar.console.width = 40
    bar(3, 10)
    bar.close()
    assert max(len(line) for line in plain(out.getvalue()).splitlines()) <= 40


def test_phases_show_only_when_they_last(monkeypatch):
    log = io.StringIO()
    with reporting(PhaseReporter(log, after=0.05, terminal=False)):
        with phase("quick"):
            pass
        with phase("loading the model"):
            time.sleep(0.3)
            with phase("building the bf16 text tower"):  # nested: says more, then ends
                time.sleep(0.3)
    text = log.getvalue()
    assert "quick" not in text
    assert text.index("building the bf16 text tower: done in ") < text.index(
        "loading the model: done in "
    )
    assert "..." not in text  # a log gets one line a phase, when it is done
    with phase("with no reporter installed"):  # library code runs the same without one
        pass


def test_a_phase_on_a_terminal_is_a_spinner_then_one_line():
    out = io.StringIO()
    reporter = PhaseReporter(out, after=0.05, terminal=True)
    with reporter("loading the model"):
        time.sleep(0.3)
        with reporter("building the bf16 vision tower"):  # one spinner, its text replaced
            time.sleep(0.3)
    text = out.getvalue()
    assert "building the bf16 vision tower..." in text  # the spinner's text
    assert "building the bf16 vision tower: done in " in text
    assert "loading the model: done in " in text


def test_a_phase_that_fails_leaves_the_error_its_one_line():
    log, out = io.StringIO(), io.StringIO()
    for stream, terminal in ((log, False), (out, True)):
        with (
            pytest.raises(ValueError),
            reporting(PhaseReporter(stream, after=0.01, terminal=terminal)),
            phase("loading the model"),
        ):
            time.sleep(0.1)
            raise ValueError("no weights")
    assert log.getvalue() == ""
    assert "done in" not in out.getvalue()


def test_phases_of_other_threads_are_shown_too():
    log = io.StringIO()
    with reporting(PhaseReporter(log, after=0.01, terminal=False)):

        def work() -> None:
            with phase("compiling in a thread"):
                time.sleep(0.1)

        t = threading.Thread(target=work)
        t.start()
        t.join()
    assert "compiling in a thread: done in " in log.getvalue()
