"""Killing a child process at a chosen point, for the crash tests: the child writes a marker
file when it reaches the point, the test then kills it with SIGKILL (nothing runs after)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_at_marker(
    proc: subprocess.Popen, marker: Path, *, within: float, never: str, poll: float = 0.02
) -> None:
    """Wait for `marker` to exist, then kill -9 `proc` and reap it. Fails with the child's
    stderr when it exits first, with `never` when `within` seconds pass without the marker."""
    deadline = time.monotonic() + within
    while not marker.exists():
        assert proc.poll() is None, f"exited early: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, never
        time.sleep(poll)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
