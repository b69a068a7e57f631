"""Child processes for the tests: killing one at a chosen point (the crash tests: the child
writes a marker file when it reaches the point, the test then kills it with SIGKILL, nothing
runs after), and running a scenario script in its own network and pid namespace (the Ray and
object-store tests: every connection stays on the namespace's loopback, every process it
starts ends with it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


def ray_node_command(address: str, name: str, i: int) -> str:
    """`ray start` of a 1-CPU worker node joining `address` (in a namespace of in_namespace):
    several nodes on one machine, each with its own temp dir (sockets) and ports."""
    flags = (
        "node-manager",
        "object-manager",
        "metrics-export",
        "dashboard-agent-listen",
        "dashboard-agent-grpc",
        "runtime-env-agent",
    )
    ports = " ".join(f"--{flag}-port {6400 + 10 * i + k}" for k, flag in enumerate(flags))
    return (
        f"ray start --address {address} --num-cpus 1 --disable-usage-stats --block "
        f"--temp-dir {os.environ['RAY_TMPDIR']}/{name} {ports}"
    )


def require_namespaces() -> None:
    """Skip (with the reason) where a new network + pid namespace cannot be made."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace (unshare -n): {probe.stderr.strip()}")


def in_namespace(
    tmp_path: Path, script: str, *args: str | Path, timeout: float = 300, **env_vars: str
) -> dict:
    """Run `script` as pid 1 of a new network + pid namespace (loopback up, nothing else), with
    argv: a fresh work folder, then `args`; its last stdout line as JSON.

    Every process it starts (Ray's included) sees only that namespace's loopback and ends
    with it; Ray's temp dir and HOME (its auth token) are private to the run."""
    require_namespaces()
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "scenario.py").write_text(script)
    # Ray's unix sockets live under its temp dir, and a socket path may not exceed 107 bytes:
    # pytest's tmp_path is too deep for them, so Ray gets a short private folder instead.
    ray_tmp = tempfile.mkdtemp(prefix="kr-", dir="/tmp")
    env = os.environ | {
        "HOME": str(tmp_path / "home"),  # Ray writes its auth token under ~/.ray
        "RAY_TMPDIR": ray_tmp,
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        **env_vars,
    }
    command = 'ip link set lo up && exec "$0" "$@"'
    try:
        done = subprocess.run(
            ["unshare", "-n", "-p", "-f", "--mount-proc", "sh", "-c", command, sys.executable]
            + [str(tmp_path / "scenario.py"), str(work), *map(str, args)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
