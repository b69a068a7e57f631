"""`index --ray`: the same library from Ray workers, through node and driver deaths.

The Ray runs happen inside their own network and pid namespace (`unshare -n -p -f`), so every
Ray connection stays on loopback and every Ray process ends with the test; Ray's temp dir
and HOME (its auth token) are private to the test. Scenario scripts run there and print
what they saw as one JSON line; the assertions are here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from indexer import IndexOptions, index_photos
from indexer.executor import LocalExecutor
from indexer.ray_executor import HashPrefixes
from tests.indexer_fixtures import assert_consistent, open_lib, rows, write_jpeg
from tests.process_fixtures import in_namespace

pytest.importorskip("ray", reason="Ray is not installed (pip install 'koclip-search[ray]')")

REPO = Path(__file__).resolve().parents[1]

# -- scenario scripts (run inside the namespace; argv: work folder, checkpoint) ---------------

COMMON = r"""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
from click.testing import CliRunner
from cli import main
from indexer import IndexOptions, index_photos
from indexer.ray_executor import RayOptions
from tests.indexer_fixtures import assert_consistent, open_lib, rows, write_jpeg
from tests.process_fixtures import kill_at_marker
work, ckpt = Path(sys.argv[1]), sys.argv[2]
out = {}

def photos(root, n):
    for i in range(n):
        write_jpeg(root / f"d{i % 3}/{i:03d}.jpg", i)

def library(root, lib=None):
    with open_lib(root, lib) as l:
        assert_consistent(l)
        r = rows(l)
        return {p: (row.content_hash, row.width, row.height, row.taken_at_source, row.taken_at.isoformat(),
                    row.facts, row.place, row.camera, row.keywords) for p, row in r.items()}, {
            p: np.frombuffer(row.embedding, np.float32) for p, row in r.items()}

def cli(*args):
    result = CliRunner().invoke(main, ["index", *map(str, args), "--model", ckpt, "--batch-size", "4"])
    return result.exit_code, result.output
"""

# (c) a `--ray local` driver killed with kill -9 after its second batch, then a rerun;
# (a) `--ray` and the local pipeline on the same folder, twice (a corrupt file, then a move
# and a duplicate).
LOCAL_SCRIPT = (
    COMMON
    + r"""
DRIVER = '''
import os, sys, time
from pathlib import Path
from indexer import IndexOptions, index_photos
from indexer.ray_executor import RayOptions
root, ckpt, marker = sys.argv[1:]
def committed(batches):
    if batches == 2:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3600)
index_photos(Path(root), IndexOptions(model=ckpt, batch_size=4, save_interval=0,
    ray=RayOptions(address="local", workers=2), on_batch_committed=committed))
'''
crash = work / "crash"
photos(crash, 24)
marker = work / "paused"
proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(crash), ckpt, str(marker)],
                        stderr=subprocess.PIPE)
kill_at_marker(proc, marker, within=120, never="the driver never committed two batches", poll=0.05)
with open_lib(crash) as l:
    out["committed_before_kill"] = len(l.photo_ids())
code, text = cli(crash, "--ray", "local", "--ray-workers", "2", "--json")
out["rerun"] = [code, json.loads(text.splitlines()[-1]) if code == 0 else text]
out["crash_paths"] = sorted(library(crash)[0])

root = work / "same"
photos(root, 10)
(root / "broken.jpg").write_bytes(b"not a jpeg")
# One photo with facts: they come back from the workers with the embedding.
from indexer.testing_facts import gps_tags, jpeg_bytes, make_exif, photo_pixels, xmp_packet
exif = make_exif(gps=gps_tags(33.4589, 126.9425), make="Apple", model="iPhone 15")
(root / "d1/004.jpg").write_bytes(jpeg_bytes(exif=exif, xmp=xmp_packet(["바다"]), image=photo_pixels((96, 64), 4)))
runs = {}
for name, flags in (("local", ["--workers", "2"]), ("ray", ["--ray", "local", "--ray-workers", "2"])):
    code, text = cli(root, "--library", work / f"lib-{name}", "--json", *flags)
    runs[name] = [json.loads(text.splitlines()[-1]) if code == 0 else text]
shutil.move(root / "d0/000.jpg", root / "moved.jpg")
shutil.copy(root / "d1/001.jpg", root / "copy-of-001.jpg")
for name, flags in (("local", ["--workers", "2"]), ("ray", ["--ray", "local", "--ray-workers", "2"])):
    code, text = cli(root, "--library", work / f"lib-{name}", "--json", *flags)
    runs[name].append(json.loads(text.splitlines()[-1]) if code == 0 else text)
for run in runs.values():
    for summary in run:
        if isinstance(summary, dict):
            summary.pop("seconds")
out["runs"] = runs
meta_local, vec_local = library(root, work / "lib-local")
meta_ray, vec_ray = library(root, work / "lib-ray")
out["same_rows"] = meta_local == meta_ray
out["facts"] = meta_ray["d1/004.jpg"][5:]
out["paths"] = sorted(meta_ray)
out["max_diff"] = max(float(np.abs(vec_local[p] - vec_ray[p]).max()) for p in vec_local)
print(json.dumps(out))
"""
)

# A head (no CPUs: every batch runs on the workers) and two 1-CPU worker nodes; node A runs
# in its own mount namespace where the folder `hidden` is an empty tmpfs.
# (d) indexing `hidden`: one clear message, nothing recorded;
# (b) indexing `shown`, node A killed after the first committed batch: the run finishes.
CLUSTER_SCRIPT = (
    COMMON
    + r"""
import ray
env = dict(os.environ)  # RAY_AUTH_MODE=token, from the test: the token is under $HOME/.ray
subprocess.run(["ray", "get-auth-token", "--generate"], check=True, env=env, capture_output=True)
subprocess.run(["ray", "start", "--head", "--num-cpus", "0", "--port", "6379",
                "--include-dashboard", "false", "--disable-usage-stats"],
               check=True, env=env, capture_output=True)
address = "127.0.0.1:6379"
hidden, shown = work / "hidden", work / "shown"
photos(hidden, 8)
photos(shown, 40)

from tests.process_fixtures import ray_node_command

def join(name, i):
    return ray_node_command(address, name, i)

quiet = {"env": env, "start_new_session": True, "stdout": subprocess.DEVNULL,
         "stderr": subprocess.DEVNULL}
node_a = subprocess.Popen(
    ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none {hidden} && exec {join('a', 0)}"], **quiet)
node_b = subprocess.Popen(join("b", 1).split(), **quiet)
node_c = subprocess.Popen(join("c", 2).split(), **quiet)
ray.init(address=address)
deadline = time.monotonic() + 90
while sum(n["Alive"] for n in ray.nodes()) < 4:
    assert time.monotonic() < deadline, "the worker nodes never joined"
    time.sleep(0.2)
ray.shutdown()

out["hidden"] = cli(hidden, "--ray", address)
out["hidden_library_left"] = (hidden / ".koclip-search").exists()

def kill_node_a(batches):
    if batches == 1:
        from ray._private.state import available_resources_per_node
        node = next(n["NodeID"] for n in ray.nodes()
                    if n["Alive"] and "/a/session" in n["ObjectStoreSocketName"])
        # Node A holds a batch when it dies: its CPU is taken (a hint that may be stale).
        out["a_busy"] = available_resources_per_node().get(node, {}).get("CPU", 0) == 0
        os.killpg(node_a.pid, signal.SIGKILL)
        out["killed_after"] = batches

summary = index_photos(shown, IndexOptions(model=ckpt, batch_size=4,
    ray=RayOptions(address=address), on_batch_committed=kill_node_a))
out["summary"] = [summary.new, summary.failed]
meta, _ = library(shown)
out["paths"] = sorted(meta)

# (e) node C killed, and a run started at once: Ray still lists C as alive, so the start-up
# probe goes to a dead node. The run goes on with node B and says which node it skipped.
more = work / "more"
photos(more, 6)
os.killpg(node_c.pid, signal.SIGKILL)
ray.init(address=address)
out["c_listed"] = any(n["Alive"] and "/c/session" in n["ObjectStoreSocketName"]
                      for n in ray.nodes())
summary = index_photos(more, IndexOptions(model=ckpt, batch_size=4,
    ray=RayOptions(address=address)))
ray.shutdown()
out["more"] = [summary.new, summary.failed, list(summary.notes)]
print(json.dumps(out))
"""
)


# A CLI run whose process is killed without a word, then a resumed run under which the cluster
# goes away (the head, the driver's own node, stopped once a batch is committed).
GONE_SCRIPT = (
    COMMON
    + r"""
import sqlite3
env = dict(os.environ)
subprocess.run(["ray", "start", "--head", "--num-cpus", "1", "--port", "6379",
                "--include-dashboard", "false", "--disable-usage-stats"],
               check=True, env=env, capture_output=True)
root = work / "gone"
photos(root, 400)
command = [sys.executable, "-c", "from cli import main; main()", "index", str(root), "--model",
           ckpt, "--batch-size", "4", "--ray", "127.0.0.1:6379"]
db_file = root / ".koclip-search" / "library.sqlite3"

def count():
    try:
        with sqlite3.connect(f"file:{db_file}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM photos").fetchone()[0]
    except sqlite3.Error:
        return 0

def run_until_more_than(n, stop):
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while count() <= n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no batch was ever committed"
        time.sleep(0.02)
    stop()
    _, err = proc.communicate(timeout=180)
    return proc.returncode, [line for line in err.splitlines() if line.strip()][-1]

# The run's own process (the watchdog's child) killed as Ray kills a driver: no word of its own.
out["killed"] = run_until_more_than(0, lambda: subprocess.run(["pkill", "-9", "-f", "prog_name="]))
out["kept_1"] = count()

def cluster_gone():
    subprocess.run(["pkill", "-STOP", "-f", "ray::"])  # frozen first: the run cannot end before
    subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True)

out["gone"] = run_until_more_than(out["kept_1"], cluster_gone)
with open_lib(root) as l:
    out["kept"] = len(l.photo_ids())
code, text = cli(root, "--json")  # resumed here, without the cluster
out["rerun"] = [code, json.loads(text.splitlines()[-1]) if code == 0 else text]
out["paths"] = len(library(root)[0])
print(json.dumps(out))
"""
)


@pytest.mark.slow
def test_ray_local_matches_the_local_pipeline_and_survives_a_killed_driver(
    tmp_path, tiny_checkpoint
):
    out = in_namespace(tmp_path, LOCAL_SCRIPT, tiny_checkpoint)
    # (c) kill -9 after two committed batches: kept, and the rerun does only the rest.
    kept = out["committed_before_kill"]
    assert 8 <= kept < 24  # two commits of one batch or more each (results that arrive together)
    code, rerun = out["rerun"]
    assert code == 0, rerun
    assert (rerun["new"], rerun["unchanged"], rerun["failed"]) == (24 - kept, kept, 0)
    assert out["crash_paths"] == sorted(f"d{i % 3}/{i:03d}.jpg" for i in range(24))
    # (a) the same photos, failures (with reasons), moves and duplicates, and vectors.
    local, ray = out["runs"]["local"], out["runs"]["ray"]
    assert all(isinstance(s, dict) for s in local + ray), (local, ray)
    assert ray == local
    assert local[0]["new"] == 10 and local[0]["failures"][0]["path"] == "broken.jpg"
    assert (local[1]["new"], local[1]["moved"]) == (1, 1)  # the copy, and the move
    assert out["same_rows"] and "moved.jpg" in out["paths"] and "copy-of-001.jpg" in out["paths"]
    assert out["facts"] == [1, "제주특별자치도 서귀포시 성산읍", "Apple iPhone 15", "바다"]
    assert out["max_diff"] <= 1e-5


@pytest.mark.slow
def test_cluster_checks_every_node_and_outlives_a_dead_node(tmp_path, tiny_checkpoint):
    # Every node and the driver find the cluster's token in $HOME/.ray (one machine here; on
    # several, it is copied to each: see the README).
    out = in_namespace(tmp_path, CLUSTER_SCRIPT, tiny_checkpoint, RAY_AUTH_MODE="token")
    # (d) a node that does not see PHOTO_DIR: one line, exit 2, nothing recorded.
    code, text = out["hidden"]
    assert code == 2, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: a Ray worker on "), text
    assert "does not see the photo folder" in lines[0] and "same path" in lines[0]
    assert not out["hidden_library_left"]
    # (b) node A died after the first commit: its batches ran on node B, each photo once.
    # (Node A almost always holds a batch then, but Ray's resource view that would tell is
    # only a hint, so it is not asserted: the run must finish either way.)
    assert out["killed_after"] == 1
    assert out["summary"] == [40, 0]
    assert out["paths"] == sorted(f"d{i % 3}/{i:03d}.jpg" for i in range(40))
    # (e) a run started right after a node died goes on without it, and says so.
    new, failed, notes = out["more"]
    assert (new, failed) == (6, 0)
    assert all(note.startswith("Ray node skipped: ") for note in notes), notes
    if out["c_listed"]:  # Ray still listed the dead node: its probe was skipped, not fatal
        assert notes, out


# -- without a cluster --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", ["index", "serve"])
def test_ray_not_installed_prints_the_install_line(tmp_path, command):
    write_jpeg(tmp_path / "p/a.jpg", 1)
    code = "import sys; sys.modules['ray'] = None; from cli import main; main()"
    where = [str(tmp_path / "p")] if command == "index" else ["--library", str(tmp_path / "p")]
    done = subprocess.run(
        [sys.executable, "-c", code, command, *where, "--ray", "local"],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "Error: --ray needs Ray on this machine: pip install 'koclip-search[ray]'"
    ]
    assert not (tmp_path / "p/.koclip-search").exists()


@pytest.mark.slow
def test_ray_auto_without_a_cluster_says_how_to_start_one(tmp_path, tiny_checkpoint):
    write_jpeg(tmp_path / "p/a.jpg", 1)
    (tmp_path / "ray").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-c", "from cli import main; main()", "index", str(tmp_path / "p")]
        + ["--model", str(tiny_checkpoint), "--ray", "auto"],
        cwd=REPO,
        # An empty Ray temp dir: no cluster started on this machine can be found.
        env=env | {"PYTHONPATH": str(REPO), "RAY_TMPDIR": str(tmp_path / "ray")},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("Error:")]
    assert "no Ray cluster found" in line and "ray start --head" in line and "--ray local" in line
    assert not (tmp_path / "p/.koclip-search").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray-workers", "2"], "go with --ray"),
        (["--gpus-per-worker", "0.5"], "go with --ray"),
        (["--ray", "local", "--watch"], "--watch runs on this machine only"),
        (["--ray", "somewhere"], "is not auto, local or HOST:PORT"),
    ],
)
def test_ray_flags_are_checked(tmp_path, args, message):
    (tmp_path / "p").mkdir()
    result = CliRunner().invoke(main, ["index", str(tmp_path / "p"), *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_hash_prefixes_hold_exactly_the_hashes_prefixes():
    hashes = {f"{i * 0x9E3779B97F4A7C15 % 2**64:016x}{i:016x}" for i in range(0, 3000, 3)}
    known = HashPrefixes(hashes)
    assert all(h in known for h in hashes)
    assert not any(
        f"{i * 0x9E3779B97F4A7C15 % 2**64:016x}{i:016x}" in known for i in range(1, 3000, 3)
    )
    # Only the first 64 bits count: another hash with a stored one's prefix is a (safe) yes.
    assert next(iter(hashes))[:16] + "f" * 16 in known
    assert "" not in known and None not in known


class _EverythingKnown:
    """A known-hashes set that says yes to every hash: a prefix collision, on every file."""

    def __contains__(self, _: object) -> bool:
        return True


class _CollidingExecutor(LocalExecutor):
    def batches(self, feed):
        feed.known_hashes = _EverythingKnown()
        return super().batches(feed)


def test_a_known_hash_false_positive_costs_time_not_photos(tmp_path, tiny_checkpoint):
    """The Ray executor's compact hash set may collide; the writer hands such a file back
    and it is decoded after all, as without the collision."""
    root, reference = tmp_path / "p", tmp_path / "q"
    for i in range(6):
        write_jpeg(root / f"{i}.jpg", i)
    shutil.copytree(root, reference)
    options = IndexOptions(model=str(tiny_checkpoint), batch_size=4, workers=2)
    summary = index_photos(
        root, options, make_executor=lambda enc, _root, opts: _CollidingExecutor(enc, 2)
    )
    assert (summary.new, summary.failed) == (6, 0)
    index_photos(reference, options)
    with open_lib(root) as lib, open_lib(reference) as ref:
        assert_consistent(lib)
        got, want = rows(lib), rows(ref)
        assert sorted(got) == sorted(want)
        for path, row in got.items():
            np.testing.assert_allclose(
                np.frombuffer(row.embedding, np.float32),
                np.frombuffer(want[path].embedding, np.float32),
                atol=1e-6,
            )


def test_workers_sharing_a_gpu_do_not_each_take_most_of_it():
    from indexer.ray_executor import worker_env

    assert worker_env(0.0) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert worker_env(1.0) == {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    shared = worker_env(0.25)
    assert shared["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert float(shared["XLA_PYTHON_CLIENT_MEM_FRACTION"]) <= 0.25


@pytest.mark.slow
def test_a_cluster_gone_under_a_run_ends_it_with_one_line_and_keeps_the_commits(
    tmp_path, tiny_checkpoint
):
    out = in_namespace(tmp_path, GONE_SCRIPT, tiny_checkpoint, RAY_AUTH_MODE="disabled")
    # Killed without a word (as Ray ends a driver whose node died): the watchdog's one line.
    code, line = out["killed"]
    assert code == 1 and line.startswith("Error: the indexing process was ended from outside")
    assert "(signal 9)" in line and "run the same command again to resume" in line
    # The cluster stopped under the resumed run: ours or the watchdog's line, exit 1.
    code, line = out["gone"]
    assert code == 1 and line.startswith("Error: "), line
    assert "run the same command again to resume" in line
    kept = out["kept"]
    assert 0 < out["kept_1"] < kept < 400
    code, rerun = out["rerun"]
    assert code == 0, rerun
    assert (rerun["new"], rerun["unchanged"], rerun["failed"]) == (400 - kept, kept, 0)
    assert out["paths"] == 400


@pytest.mark.slow
def test_an_address_where_nothing_answers_fails_fast_with_one_line(tmp_path, tiny_checkpoint):
    """Ray itself would wait minutes for a head that does not answer (a stale address)."""
    import socket

    with socket.socket() as s:  # a loopback port that was free a moment ago: nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_jpeg(tmp_path / "p/a.jpg", 1)
    done = subprocess.run(
        [sys.executable, "-c", "from cli import main; main()", "index", str(tmp_path / "p")]
        + ["--model", str(tiny_checkpoint), "--ray", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO), "RAY_TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("Error:")]
    assert f"nothing answers at 127.0.0.1:{port}" in line and "ray start --head" in line
    assert not (tmp_path / "p/.koclip-search").exists()
