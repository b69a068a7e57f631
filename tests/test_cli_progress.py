"""The terminal progress bars of `index`, `eval` and `train`."""

from __future__ import annotations

import io

from cli.progress import ProgressBar, TrainBar, clock
from train import TrainProgress


def test_clock():
    assert clock(62) == "1:02" and clock(3723) == "1:02:03" and clock(0.4) == "0:00"


def test_train_bar_keeps_one_line_per_epoch():
    out = io.StringIO()
    bar = TrainBar(out, width=8, min_interval=0)
    bar(TrainProgress(1, 2, 1, 4, 2.5, 3.0, seconds_left=65))
    bar(TrainProgress(1, 2, 2, 4, 2.0, 3.0, seconds_left=30, epoch_done=True))
    bar(TrainProgress(2, 2, 3, 4, 1.5, 3.0))
    bar.close()
    text = out.getvalue()
    assert "[####....] epoch 1/2  step 2/4  loss 2.0000" in text and "ETA 1:05" in text
    assert "\n  epoch 1/2: loss 2.0000\n" in text
    assert text.endswith("\n") and text.count("\n") == 3


def test_progress_bar_throttles_but_always_draws_the_end():
    out = io.StringIO()
    bar = ProgressBar(out, width=4, min_interval=3600)
    bar(1, 10)
    bar(2, 10)  # too soon: not drawn
    bar(10, 10)
    bar.close()
    assert out.getvalue().count("\r") == 2 and "10/10 files" in out.getvalue()
