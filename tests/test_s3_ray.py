"""`index s3://… --ray`: Ray workers read their objects from the bucket themselves.

The Ray run happens in its own network and pid namespace (tests/process_fixtures.in_namespace),
with moto's S3 server on the namespace's 127.0.0.1; the scenario prints what it saw as one
JSON line, the assertions are here. The start-up probe's check of a node that cannot read the
store runs here through the real check (no Ray needed for it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.ray_executor import ClusterSetupError, WorkerSpec, check_photo_root
from tests import s3_fixtures
from tests.process_fixtures import in_namespace

pytest.importorskip("ray", reason="Ray is not installed (pip install 'koclip-search[ray]')")

moto_server, s3 = s3_fixtures.moto_server, s3_fixtures.s3  # the fixtures, used by name

SCRIPT = r"""
import json, os, subprocess, sys, time
from pathlib import Path
import boto3
import numpy as np
from click.testing import CliRunner
from moto.server import ThreadedMotoServer
import db
from cli import main
from tests.indexer_fixtures import assert_consistent, rows
from tests.s3_fixtures import jpeg, s3_environment

work, ckpt = Path(sys.argv[1]), sys.argv[2]
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
os.environ.update(s3_environment(work, f"http://{host}:{port}"))
client = boto3.client("s3")
client.create_bucket(Bucket="photos")
for i in range(10):
    client.put_object(Bucket="photos", Key=f"p/d{i % 3}/{i:03d}.jpg", Body=jpeg(i))
client.put_object(Bucket="photos", Key="p/broken.jpg", Body=b"not a photo")
url = "s3://photos/p"
out = {}
# One Ray for both runs, started with this environment: its workers' credentials are the
# node's own (the driver sends none).
subprocess.run(["ray", "start", "--head", "--num-cpus", "2", "--port", "6379",
                "--include-dashboard", "false", "--disable-usage-stats"],
               check=True, capture_output=True)

def cli(library, *args):
    result = CliRunner().invoke(main, ["index", url, "--library", str(work / library),
                                       "--model", ckpt, "--batch-size", "4", *args])
    return [result.exit_code, result.output.strip().splitlines()]

def library(name):
    with db.Library.open(work / name) as lib:
        assert_consistent(lib)
        found = rows(lib)
        meta = {p: [r.content_hash, r.etag, r.size, r.mtime_ns, r.width, r.height, r.taken_at_source]
                for p, r in found.items()}
        vectors = {p: np.frombuffer(r.embedding, np.float32) for p, r in found.items()}
        return meta, vectors

def compare(tag):
    meta_local, vec_local = library("local")
    meta_ray, vec_ray = library("ray")
    out[f"{tag}_same"] = meta_local == meta_ray
    out[f"{tag}_paths"] = sorted(meta_ray)
    out[f"{tag}_max_diff"] = max(float(np.abs(vec_local[p] - vec_ray[p]).max()) for p in vec_local)

out["local"] = cli("local")
out["ray"] = cli("ray", "--ray", "127.0.0.1:6379")
compare("first")
# A moved object, a new one and a deleted one: both libraries follow.
client.copy_object(Bucket="photos", Key="p/moved.jpg", CopySource={"Bucket": "photos", "Key": "p/d0/000.jpg"})
client.delete_object(Bucket="photos", Key="p/d0/000.jpg")
client.put_object(Bucket="photos", Key="p/new.jpg", Body=jpeg(42))
client.delete_object(Bucket="photos", Key="p/d1/001.jpg")
out["local2"] = cli("local")
out["ray2"] = cli("ray", "--ray", "127.0.0.1:6379")
compare("second")

# A node joins whose environment holds no credentials: the start-up probe names it.
import ray
from tests.process_fixtures import ray_node_command
bare = {k: v for k, v in os.environ.items()
        if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
subprocess.Popen(ray_node_command("127.0.0.1:6379", "bare", 0).split(), env=bare,
                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
ray.init(address="127.0.0.1:6379")
deadline = time.monotonic() + 90
while sum(n["Alive"] for n in ray.nodes()) < 2:
    assert time.monotonic() < deadline, "the node without credentials never joined"
    time.sleep(0.2)
ray.shutdown()
out["bare"] = cli("ray", "--ray", "127.0.0.1:6379")
subprocess.run(["ray", "stop", "--force"], capture_output=True)
server.stop()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_ray_workers_read_the_bucket_and_make_the_local_library(tmp_path, tiny_checkpoint):
    out = in_namespace(tmp_path, SCRIPT, tiny_checkpoint)
    assert out["local"][0] == 0 and out["ray"][0] == 0, out
    assert out["first_same"] and out["first_max_diff"] < 1e-5, out
    assert out["first_paths"] == sorted(f"d{i % 3}/{i:03d}.jpg" for i in range(10))
    assert out["local2"][0] == 0 and out["ray2"][0] == 0, out
    assert out["second_same"] and out["second_max_diff"] < 1e-5, out
    expected = {f"d{i % 3}/{i:03d}.jpg" for i in range(2, 10)} | {"moved.jpg", "new.jpg"}
    assert out["second_paths"] == sorted(expected)
    # The node without credentials: one line naming it, exit 2.
    code, lines = out["bare"]
    assert code == 2 and len(lines) == 1, out["bare"]
    assert lines[0].startswith("Error: a Ray worker on "), lines
    assert "cannot read s3://photos/p" in lines[0] and "credentials" in lines[0]


def _probe_spec(s3) -> WorkerSpec:
    """What the start-up probe of a worker is given for the bucket's root `p`."""
    return WorkerSpec(
        photo_root=s3.url("p"),
        model="m",
        precision="fp32",
        fingerprint="f",
        batch_size=4,
        threads=1,
        endpoint=s3.endpoint,
    )


def test_a_node_without_credentials_is_named_by_the_probe(s3, monkeypatch):
    s3.put_jpegs("p", {"a.jpg": 1})
    spec = _probe_spec(s3)
    check_photo_root(spec)  # this node reads it
    # A node whose environment holds no credentials (and no files, no instance role).
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    other = WorkerSpec(**{**spec.__dict__, "endpoint": s3.endpoint + "/"})  # not cached
    with pytest.raises(ClusterSetupError) as refused:
        check_photo_root(other)
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and refused.value.exit_code == 2
    assert message.startswith("a Ray worker on ")
    assert f"cannot read {s3.url('p')}" in message and "credentials were refused" in message
    assert s3_fixtures.SECRET_KEY not in message


def test_a_node_that_cannot_reach_the_store_is_named(s3):
    s3.proxy.stop()  # the store's address answers nothing from this node
    spec = _probe_spec(s3)
    import storage

    fast = storage.Retry(tries=2, base=0.01, cap=0.02)
    from indexer import ray_executor

    ray_executor._roots[(spec.photo_root, spec.endpoint)] = storage.open_root(
        spec.photo_root, endpoint_url=spec.endpoint, retry=fast, timeout=2
    )
    try:
        with pytest.raises(ClusterSetupError, match=r"^a Ray worker on .*: cannot reach s3://"):
            check_photo_root(spec)
    finally:
        ray_executor._roots.clear()


def test_a_folder_root_is_still_checked_as_a_folder(tmp_path):
    spec = WorkerSpec(str(tmp_path / "nowhere"), "m", "fp32", "f", 4, 1)
    with pytest.raises(ClusterSetupError, match="does not see the photo folder"):
        check_photo_root(spec)


def test_worker_spec_holds_no_secret(s3, tiny_checkpoint):
    """What travels to the workers: the URL and the endpoint as shown, nothing else of S3."""
    from koclip import load_encoder
    from storage import open_root

    root = open_root(s3.url("p"), endpoint_url=s3.endpoint.replace("://", "://user:pw@"))
    encoder = load_encoder(str(tiny_checkpoint), ("vision",), batch_size=4)
    from indexer.ray_executor import worker_spec

    spec = worker_spec(root, encoder, batch_size=4, cpus_per_worker=1.0)
    assert spec.photo_root == s3.url("p") and spec.endpoint == s3.endpoint
    assert "pw" not in repr(spec) and s3_fixtures.SECRET_KEY not in repr(spec)
    assert isinstance(spec.photo_root, str) and Path(spec.photo_root).name == "p"
