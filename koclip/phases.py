"""Named phases of long set-up work (a model converted, traced, compiled; a fast tower built),
so that whoever runs the work can show what it is doing. Library code only names its phases;
it never prints: a caller that wants them shown installs a reporter (the CLI does).

    with phase("building the bf16 text tower (once per model)"):
        ...
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

# A reporter turns a phase's text into a context manager that shows it while it runs.
Reporter = Callable[[str], AbstractContextManager[object]]

_reporter: Reporter | None = None
_lock = threading.Lock()


@contextlib.contextmanager
def phase(text: str) -> Iterator[None]:
    """Mark `text` as what this thread is doing until the block ends (a phase inside another
    says more precisely what the outer one is doing now)."""
    reporter = _reporter
    if reporter is None:
        yield
        return
    with reporter(text):
        yield


def set_reporter(reporter: Reporter | None) -> Reporter | None:
    """Install `reporter` for every thread of this process; returns the one it replaces."""
    global _reporter
    with _lock:
        previous, _reporter = _reporter, reporter
    return previous
