"""`index --ray` under a watchdog: the run happens in a child process, this one only waits.

Why: when the Ray node a driver is attached to goes away (the cluster is stopped, the head
machine dies), Ray ends the driver process from its C++ core with exit status 1: no Python
exception, no `atexit`, no message of ours. The child marks a normal end (success, or one of
our errors already printed) by writing one byte to a pipe from `atexit`; a child that ends
without it was ended from outside, and this process says so in one line. Committed batches
are safe either way (the library is crash-safe), so the line says how to resume.

Only where the command owns real stdout/stderr (a terminal, a pipe, a file): an embedding
caller (click's test runner, a Python caller) runs in-process as before.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

# Set in the child: the pipe's write end, where a normal end is marked.
ENV = "KOCLIP_SEARCH_SUPERVISOR_FD"
_DONE = b"1"
_PR_SET_PDEATHSIG = 1


def can_supervise() -> bool:
    """True in the top process of a command that owns its standard streams, with Ray there."""
    if ENV in os.environ:
        return False  # already the child
    if importlib.util.find_spec("ray") is None:
        return False  # the run itself says how to install it
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


def mark_normal_end() -> None:
    """In the child: write the mark when Python exits normally (any exit status)."""
    fd = os.environ.pop(ENV, None)
    if fd is None:
        return

    def done() -> None:
        with contextlib.suppress(OSError, ValueError):
            os.write(int(fd), _DONE)

    atexit.register(done)


def run_supervised(argv: Sequence[str]) -> NoReturn:
    """Run `koclip-search ARGV` as a child and exit with its status, or with one line of our
    own (exit 1) if it was ended without finishing (Ray's exit, a signal)."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    code = "import sys; from cli import main; main(prog_name='koclip-search')"
    child = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        pass_fds=(write_end,),
        env=os.environ | {ENV: str(write_end)},
        preexec_fn=_end_with_parent if sys.platform.startswith("linux") else None,
    )
    os.close(write_end)
    # Ctrl-C reaches the child from the terminal (same process group); this one waits for it.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    forward = signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        status = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, forward)
    try:
        finished = os.read(read_end, 1) == _DONE
    except BlockingIOError:
        finished = False  # a Ray process of the child's still holds the pipe: nothing written
    finally:
        os.close(read_end)
    if finished:
        sys.exit(status if status >= 0 else 128 - status)
    how = f"signal {-status}" if status < 0 else f"exit status {status}"
    click.echo(
        f"Error: the indexing process was ended from outside ({how}): the Ray cluster or "
        "its node on this machine went away, or the process was killed; every committed "
        "batch is kept: run the same command again to resume",
        err=True,
    )
    sys.exit(1)


def _end_with_parent() -> None:
    """In the child before exec (Linux): a killed watchdog takes its run with it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
