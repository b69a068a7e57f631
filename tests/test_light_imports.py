"""The names the command line is built from cost no model: importing `koclip.names`, or asking
any command for `--help`, imports no JAX, FAISS, PyTorch or inference runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "flax", "faiss", "torch", "openvino", "onnxruntime", "ray")


def _heavy_after(code: str) -> tuple[list[str], str]:
    """The heavy modules a fresh interpreter holds after running `code`, and what it printed."""
    script = (
        "import io, contextlib, json, sys\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    {code}\n"
        f"print(json.dumps([[m for m in {HEAVY!r} if m in sys.modules], out.getvalue()]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=True,
    )
    heavy, printed = json.loads(done.stdout.splitlines()[-1])
    return heavy, printed


def test_names_import_nothing_heavy():
    heavy, _ = _heavy_after("import koclip.names")
    assert heavy == []


@pytest.mark.parametrize(
    ("command", "shows"),
    [
        ([], "duplicates"),
        (["index"], "bf16"),
        (["reindex"], "ivf-pq"),
        (["duplicates"], "0.90"),
    ],
)
def test_help_imports_nothing_heavy(command, shows):
    call = (
        "from cli.main import main\n"
        "    try:\n"
        f"        main({[*command, '--help']!r}, prog_name='koclip-search')\n"
        "    except SystemExit:\n"
        "        pass"
    )
    heavy, printed = _heavy_after(call)
    assert shows in printed  # the help was printed, with the shared names in it
    assert heavy == []


def test_the_command_line_starts_without_numpy_pillow_or_rich():
    """`import cli` (every command's start) loads only click and our light modules: numpy,
    Pillow and rich come with the command that needs them."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, cli; print([m for m in ('numpy', 'PIL', 'rich') "
         "if m in sys.modules])"],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=True,
    )  # fmt: skip
    assert done.stdout.strip() == "[]"
