"""What every fast path is made of, apart from choosing one (`koclip.fast.precision`): the
`FastPath` record, the `Runner` a built tower is opened as, and the threads a runtime may use.

`bf16` and `quantized` each describe themselves as a `FastPath` here; `precision` imports them
to choose and check. Nothing here imports a runtime.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from koclip.config import KoCLIPConfig

# feeds (input name -> array) -> the tower's projected features
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def cpu_threads() -> int:
    """Threads a runtime may use: $OMP_NUM_THREADS where set (Ray sets it per worker), else the
    CPUs this process may run on."""
    with contextlib.suppress(ValueError):
        n = int(os.environ.get("OMP_NUM_THREADS", ""))
        if n > 0:
            return n
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class FastPath:
    """One fast precision: how to build a tower's files, open them, and whether it runs here.

    `build(config, params, tower, stem)` writes the files `stem` + each of `suffixes`;
    `open(stem) -> Runner` loads them. `available()` is None where the path can run here, else
    the reason it cannot (one line, said to the user when the precision is asked for outright).
    """

    name: str
    version: int  # bump when the graph or the recipe changes: old cache files are not read
    suffixes: tuple[str, ...]
    build: Callable[[KoCLIPConfig, Any, str, Path], None]
    open: Callable[[Path], Runner]
    available: Callable[[], str | None]
    chosen_by_auto: bool  # False: used only when asked for by name
