"""Stages 2 and 3 on a Ray cluster: each Ray task reads a batch of files and encodes it.

The driver (indexer.pipeline) still discovers, plans and commits; here it only cuts the feed
into batches, keeps a bounded number of them in flight (`ray.wait`), and hands each result to
the writer as it arrives. A worker runs the very stages of the local executor (`load_chunk`,
`encode`) with one vision tower per worker process, loaded on its first batch and kept.

Ray tasks, not actors: a task on a worker process or node that dies is retried by Ray on
the nodes left (an actor would wait for room to restart), and a batch is committed only when
its result arrives, so every photo is committed exactly once. Ray is imported only here, and
only when a run asks for it.

A root in object storage (`s3://bucket/prefix`): the tasks carry the objects' keys (with the
listed size and ETag), and each worker process opens the root itself (storage.open_root, from
the URL and the endpoint as shown, which hold no secret) and reads its objects from the store.
The credentials are the worker's own, from its node's standard chain (environment variables
on each node, config files, an instance role): nothing secret travels through Ray. The
start-up probe lists the root and reads one byte on every node.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.executor import Feed, Job, encode, load_chunk, pil_bomb_check_off
from indexer.load import Loaded, Reader
from koclip.encoder import Encoder
from koclip.errors import KoclipSearchError
from storage import ObjectRoot, StorageCredentialsError, StorageError, is_url, open_root

INSTALL_LINE = "pip install 'koclip-search[ray]'"
# At most this many batches' results go into one commit (when they arrive together).
GROUP_COMMIT = 16
# A batch whose worker (or node) dies is tried again this many times, then the run stops.
MAX_RETRIES = 5
# How long the start-up probe waits for a node that Ray lists (a model load included) before
# the run goes on without it.
PROBE_SECONDS = 600.0
# Seconds to wait for a cluster's head to accept a connection before saying there is none.
CONNECT_TIMEOUT = 10.0


class ClusterError(KoclipSearchError):
    """The Ray cluster failed under a run (gone, or a batch lost too often); what was
    committed stays, and the same command resumes."""

    exit_code = 1
    http_status = 503
    code = "cluster_error"


class ClusterSetupError(ClusterError):
    """The cluster cannot run this index as asked: Ray missing, no cluster at the address,
    a worker that does not see PHOTO_DIR or cannot load the model, no room for one worker."""

    exit_code = 2


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide `index --ray` runs."""

    # "auto": the cluster in RAY_ADDRESS or the one started on this machine (`ray start`);
    # "local": a private Ray on this machine for this run; "HOST:PORT": that cluster;
    # None: the first of RAY_ADDRESS / this machine's cluster / a private one (Ray's own rule).
    address: str | None = None
    workers: int | None = None  # default: as many as the cluster's CPUs (GPUs) hold
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be at least 1")
        if not (math.isfinite(self.cpus_per_worker) and self.cpus_per_worker > 0):
            raise ValueError("cpus_per_worker must be a positive number")
        if not (math.isfinite(self.gpus_per_worker) and self.gpus_per_worker >= 0):
            raise ValueError("gpus_per_worker must be a number >= 0")


# A worker's encoder, from the spec; the default loads `spec.model` like the driver did.
EncoderFactory = Callable[["WorkerSpec"], Encoder]


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker must agree with the driver on."""

    photo_root: str  # a folder's path (the same on every node), or an object store's URL
    model: str
    precision: str
    fingerprint: str
    batch_size: int
    threads: int
    encoder_factory: EncoderFactory | None = None
    endpoint: str | None = None  # an object store's endpoint, as shown (no user info)


def worker_spec(
    photo_root: Path | ObjectRoot,
    encoder: Encoder,
    *,
    batch_size: int,
    cpus_per_worker: float,
    encoder_factory: EncoderFactory | None = None,
) -> WorkerSpec:
    """What the workers get: a folder's path, or an object store's URL and its endpoint as
    shown (no user info or query: nothing secret; each node has its own credentials)."""
    objects = isinstance(photo_root, ObjectRoot)
    return WorkerSpec(
        photo_root=photo_root.url if objects else str(photo_root),
        model=encoder.model_id,
        precision=encoder.precision,
        fingerprint=encoder.fingerprint,
        batch_size=batch_size,
        # An object's read waits on the network: more threads than cores overlap the reads.
        threads=max(1, math.floor(cpus_per_worker)) * (4 if objects else 1),
        encoder_factory=encoder_factory,
        endpoint=photo_root.endpoint_display if objects else None,
    )


class HashPrefixes:
    """The library's content hashes as a sorted array of their first 64 bits: a set the size
    of 8 bytes a photo, sent to the cluster once per run instead of with every batch.

    A collision (about n / 2^64) makes a new file look like a stored twin; the writer finds no
    row with its full hash and hands it back to be decoded, so it costs time, never a photo.
    """

    def __init__(self, hashes: Sequence[str] | set[str]) -> None:
        keys = np.fromiter((int(h[:16], 16) for h in hashes), dtype=np.uint64, count=len(hashes))
        self.keys = np.unique(keys)

    def __contains__(self, content_hash: object) -> bool:
        if not isinstance(content_hash, str) or len(content_hash) < 16:
            return False
        key = np.uint64(int(content_hash[:16], 16))
        i = int(np.searchsorted(self.keys, key))
        return i < len(self.keys) and self.keys[i] == key


class RayExecutor:
    """Connects to (or starts) Ray, checks every node, then reads and encodes batches there."""

    def __init__(
        self,
        options: RayOptions,
        encoder: Encoder,
        photo_root: Path | ObjectRoot,
        *,
        batch_size: int,
        encoder_factory: EncoderFactory | None = None,
    ) -> None:
        ray = require_ray()
        self._ray = ray
        self.options = options
        self.spec = worker_spec(
            photo_root,
            encoder,
            batch_size=batch_size,
            cpus_per_worker=options.cpus_per_worker,
            encoder_factory=encoder_factory,
        )
        # Nodes Ray still listed that failed or never answered the start-up probe (gone).
        self.skipped_nodes: list[str] = []
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            connect(ray, options)
        try:
            self.capacity = self._capacity()
            self.workers = options.workers or self.capacity
            # Up to one batch queued behind each running one, so a worker never waits for the
            # driver; no more running at once than `--ray-workers`.
            self.max_in_flight = self.workers if self.workers < self.capacity else 2 * self.workers
            self._task = ray.remote(_read_and_encode)
            self._task_options = {
                "num_cpus": options.cpus_per_worker,
                "num_gpus": options.gpus_per_worker,
                "max_retries": MAX_RETRIES,
                "retry_exceptions": False,
                "runtime_env": {"env_vars": worker_env(options.gpus_per_worker)},
            }
            self._check_nodes()
        except BaseException:
            self.close()
            raise
        self._in_flight = 0

    # -- set-up ------------------------------------------------------------------------------

    def _capacity(self) -> int:
        """How many workers the cluster holds at once."""
        resources = self._ray.cluster_resources()
        fits = [resources.get("CPU", 0) / self.options.cpus_per_worker]
        if self.options.gpus_per_worker:
            fits.append(resources.get("GPU", 0) / self.options.gpus_per_worker)
        capacity = math.floor(min(fits) + 1e-9)
        if capacity < 1:
            have = f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
            want = f"{self.options.cpus_per_worker:g} CPUs, {self.options.gpus_per_worker:g} GPUs"
            raise ClusterSetupError(
                f"the Ray cluster ({have}) has no room for one worker ({want}); "
                "lower --cpus-per-worker / --gpus-per-worker or add nodes"
            )
        return capacity

    def _check_nodes(self) -> None:
        """Every node that can hold a worker sees PHOTO_DIR and loads the same model, or the
        run stops here with one message (instead of recording every file as failed).

        A node that Ray still lists but that is gone (it died moments ago: Ray notices a dead
        node only after missed health checks) fails its probe with Ray's own error, or never
        answers it: the run goes on without it (`skipped_nodes`), as long as one node passed.
        A node that answers with a problem of its own (no photo folder, other weights) stops
        the run, since its workers would fail every batch."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._ray
        probes: dict[Any, str] = {}
        for node in ray.nodes():
            res = node.get("Resources", {})
            room = res.get("CPU", 0) >= self.options.cpus_per_worker and (
                res.get("GPU", 0) >= self.options.gpus_per_worker
            )
            if node.get("Alive") and room:
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                name = node.get("NodeManagerAddress") or node["NodeID"][:12]
                probes[self._submit(strategy, [], None, None)] = name
        ready, pending = ray.wait(list(probes), num_returns=len(probes), timeout=PROBE_SECONDS)
        passed = 0
        for ref in ready:
            try:
                self._get(ref)
                passed += 1
            except ClusterSetupError:
                raise
            except ClusterError as exc:
                self.skipped_nodes.append(f"{probes[ref]} ({first_line(exc.__cause__)})")
        for ref in pending:
            ray.cancel(ref, force=True)
            self.skipped_nodes.append(f"{probes[ref]} (no answer in {PROBE_SECONDS:g} s)")
        if probes and not passed:
            raise ClusterError(
                "no node of the Ray cluster answered the start-up check: "
                + "; ".join(self.skipped_nodes)
            )

    # -- the run -----------------------------------------------------------------------------

    def batches(self, feed: Feed) -> Iterator[list[Loaded]]:
        ray = self._ray
        known = ray.put(HashPrefixes(feed.known_hashes))  # a snapshot: see HashPrefixes
        in_flight: dict[Any, int] = {}  # result ref -> files in it
        self._in_flight = 0
        try:
            while feed.queue or in_flight:
                while feed.queue and len(in_flight) < self.max_in_flight:
                    n = min(feed.batch_size, len(feed.queue))
                    jobs = [feed.queue.popleft() for _ in range(n)]
                    ref = self._submit("SPREAD", jobs, known, feed.max_pixels)
                    in_flight[ref] = n
                    self._in_flight += n
                ray.wait(list(in_flight), num_returns=1)
                # Every result already here goes into one commit: at a high rate the driver
                # pays SQLite's durable commit once for several batches, not once each.
                ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
                ready = ready[:GROUP_COMMIT]
                items = [item for part in self._get(ready) for item in _unpacked(*part)]
                for ref in ready:
                    self._in_flight -= in_flight.pop(ref)
                yield items
        finally:
            for ref in in_flight:  # an error or Ctrl-C: the batches in flight are dropped
                ray.cancel(ref, force=True)
            self._in_flight = 0

    def _submit(self, strategy: Any, jobs: list[Job], known: Any, max_pixels: int | None) -> Any:
        task = self._task.options(scheduling_strategy=strategy, **self._task_options)
        return task.remote(self.spec, jobs, known, max_pixels)

    def _get(self, refs: Any) -> Any:
        """ray.get, with a worker's own error raised as such and Ray's failures as ClusterError."""
        ray = self._ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except ray.exceptions.RayError as exc:
            first = first_line(exc)
            raise ClusterError(
                f"the Ray cluster failed ({first}); every committed batch is kept: run the "
                "same command again to resume"
            ) from exc

    def in_flight(self) -> int:
        return self._in_flight

    def close(self) -> None:
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()


def first_line(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require_ray() -> Any:
    """The `ray` module, or ClusterSetupError with the line that installs it."""
    try:
        import ray
    except ImportError:
        raise ClusterSetupError(f"--ray needs Ray on this machine: {INSTALL_LINE}") from None
    return ray


def worker_env(gpus_per_worker: float) -> dict[str, str]:
    """Environment of every worker: JAX takes GPU memory as it needs it (no 75% grab each),
    and at most its share of the card where several workers share one."""
    env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    if 0 < gpus_per_worker < 1:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 * gpus_per_worker:.3f}"
    return env


def connect(ray: Any, options: RayOptions, *, command: str = "index") -> None:
    """`ray.init` for `options.address`, or ClusterSetupError with one line: Ray waits
    minutes for a cluster that does not answer, this at most CONNECT_TIMEOUT seconds."""
    kw: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "include_dashboard": False,
    }
    address = options.address
    if address == "local" and options.workers:
        kw["num_cpus"] = math.ceil(options.workers * options.cpus_per_worker)
    where = "RAY_ADDRESS or this machine" if address in (None, "auto") else address
    hint = f"start one with `ray start --head`, or {command} with --ray local"
    # Ray waits minutes for a cluster that does not answer (a stale address, a head that is
    # down): a plain connection to its port first, bounded.
    gcs = _bootstrap_address(ray, address)
    if gcs is not None:
        host, _, port = gcs.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
        except (OSError, ValueError) as exc:
            raise ClusterSetupError(
                f"no Ray cluster found at {where} (nothing answers at {gcs}: "
                f"{getattr(exc, 'strerror', None) or exc}); {hint}"
            ) from None
    try:
        with warnings.catch_warnings():
            # Ray starts its processes with fork+exec, which JAX (already loaded) warns about.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
            ray.init(address=address, **kw)
    except ConnectionError as exc:
        raise ClusterSetupError(f"no Ray cluster found at {where} ({exc}); {hint}") from None


def _bootstrap_address(ray: Any, address: str | None) -> str | None:
    """The HOST:PORT `ray.init(address)` would connect to; None for a private Ray (or when
    Ray does not say: then its own waiting applies)."""
    if address == "local" or (address is not None and address.startswith("ray://")):
        return None
    if address is not None and address != "auto":
        return address
    try:  # Ray's own rule: RAY_ADDRESS, the cluster started here, a running one
        from ray._private.services import get_ray_address_from_environment

        found = get_ray_address_from_environment(address, None)
    except Exception:
        return None
    return found if found and found not in ("auto", "local") and ":" in found else None


# -- on a worker --------------------------------------------------------------------------------

# One vision tower per worker process, loaded on its first batch and kept for the next ones;
# one connection to an object store's root too.
_encoders: dict[WorkerSpec, Encoder] = {}
_roots: dict[tuple[str, str | None], ObjectRoot] = {}


def _read_and_encode(
    spec: WorkerSpec, jobs: list[Job], known: Any, max_pixels: int | None
) -> tuple[list[Loaded], list[int], np.ndarray | None]:
    """A Ray task: check the worker sees the photos and the model, then read and encode `jobs`
    (none for the start-up probe). The items come back without pixels (see `_packed`)."""
    encoder = _worker_encoder(spec)
    if not jobs:
        return _packed([])
    with pil_bomb_check_off():
        items = load_chunk(jobs, known, max_pixels, spec.threads, read=_worker_reader(spec))
    encode(encoder, items)
    return _packed(items)


def _packed(items: list[Loaded]) -> tuple[list[Loaded], list[int], np.ndarray | None]:
    """A batch's result for the trip back: its vectors as one array, not one array an item
    (unpickling thousands of small arrays was most of the driver's receiving time)."""
    rows = [i for i, item in enumerate(items) if item.embedding is not None]
    matrix = np.stack([items[i].embedding for i in rows]) if rows else None
    for i in rows:
        items[i].embedding = None
    return items, rows, matrix


def _unpacked(items: list[Loaded], rows: list[int], matrix: np.ndarray | None) -> list[Loaded]:
    """The driver's side of `_packed`."""
    for i, vector in zip(rows, matrix if matrix is not None else (), strict=True):
        items[i].embedding = vector
    return items


def _worker_reader(spec: WorkerSpec) -> Reader | None:
    """How a worker reads its jobs' files: None for a folder, the store for a URL root."""
    if not is_url(spec.photo_root):
        return None
    from indexer.objects import object_reader

    return object_reader(_worker_root(spec))


def _worker_root(spec: WorkerSpec) -> ObjectRoot:
    """This worker process's connection to the object store's root (opened once)."""
    key = (spec.photo_root, spec.endpoint)
    root = _roots.get(key)
    if root is None:
        root = _roots[key] = open_root(spec.photo_root, endpoint_url=spec.endpoint)
    return root


def check_photo_root(spec: WorkerSpec) -> None:
    """The start-up probe's check of the photos from this node: the folder is there and not
    empty, or the object store's root can be listed and read with this node's credentials;
    ClusterSetupError naming the node otherwise."""
    host = _node_name()
    if is_url(spec.photo_root):
        try:
            _worker_root(spec).probe()
        except StorageCredentialsError as exc:
            raise ClusterSetupError(
                f"a Ray worker on {host}: {exc} (each node reads the store with its own "
                "credentials)"
            ) from None
        except StorageError as exc:
            raise ClusterSetupError(f"a Ray worker on {host}: {exc}") from None
        return
    root = Path(spec.photo_root)
    try:
        seen = root.is_dir() and any(os.scandir(root))
    except OSError:
        seen = False
    if not seen:
        raise ClusterSetupError(
            f"a Ray worker on {host} does not see the photo folder {root} (missing or empty "
            "there); every node must mount it at the same path"
        )


def _node_name() -> str:
    """This machine's name, and the Ray node's address when it says (nodes may share a name)."""
    host = socket.gethostname()
    try:
        import ray

        address = ray.util.get_node_ip_address() if ray.is_initialized() else ""
    except Exception:  # not in a Ray worker: the host name alone
        address = ""
    return f"{host} ({address})" if address else host


def _worker_encoder(spec: WorkerSpec) -> Encoder:
    encoder = _encoders.get(spec)
    if encoder is not None:
        return encoder
    check_photo_root(spec)
    host = socket.gethostname()
    try:
        if spec.encoder_factory is not None:
            encoder = spec.encoder_factory(spec)
        else:
            from koclip import load_encoder

            encoder = load_encoder(
                spec.model, ("vision",), precision=spec.precision, batch_size=spec.batch_size
            )
    except KoclipSearchError as exc:
        raise ClusterSetupError(
            f"a Ray worker on {host} cannot load the model {spec.model}: {exc}"
        ) from None
    if encoder.fingerprint != spec.fingerprint:
        raise ClusterSetupError(
            f"a Ray worker on {host} has other weights for {spec.model} "
            f"({encoder.fingerprint[:12]}, the driver {spec.fingerprint[:12]}); "
            "give every node the same checkpoint"
        )
    _encoders[spec] = encoder
    return encoder
