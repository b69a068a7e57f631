"""`serve --ray`: the web app on a Ray cluster, N replicas behind one HTTP entry point.

Each replica is a Ray Serve deployment replica running the very app `web.app.create_app`
builds: `serve.ingress` is given a builder function that Ray evaluates on the replica, so every
replica opens the library read-only (a folder every node sees at the same path, as for
`index --ray`), loads and warms its own text tower, and follows the library as `serve` does
(`Searcher.follow_library`: a new commit, or a re-index with another model, is taken up before
the next query is encoded). Ray Serve's proxy is the one HTTP entry point; a request that
finds every replica busy and the proxy's queue full is answered 503 with Retry-After.

`serve --watch` stays single-process (one writer): replicas never write. Ray is imported only
here, and only when `serve --ray` runs.

    from web.replicas import ReplicaOptions, ReplicaService
    with ReplicaService("/mnt/photos/.koclip-search", options=ReplicaOptions(address="local",
                                                                              replicas=2)) as s:
        print(s.url, s.ready())          # serves until the block ends
"""

from __future__ import annotations

import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.ray_executor import (
    INSTALL_LINE,
    ClusterError,
    ClusterSetupError,
    RayOptions,
    connect,
    first_line,
    require_ray,
    worker_env,
)
from web.batcher import BATCH_WINDOW, MAX_BATCH, QUEUE_SIZE

APP_NAME = "koclip-search"
DEPLOYMENT_NAME = "KoclipSearch"
# Every answer names the replica that made it (Ray Serve's replica id).
REPLICA_HEADER = "X-Koclip-Replica"
# Requests one replica works on at once: its searches run one at a time on its search thread
# (web.backend), so more would only wait there; thumbnails and photo lookups run beside them.
MAX_ONGOING = 8
# Requests the entry point holds while every replica is at MAX_ONGOING; beyond them, 503.
MAX_QUEUED = 128
# The Retry-After of that 503, in seconds.
RETRY_AFTER = 1.0
# How long the start-up probe waits for every node to answer.
PROBE_SECONDS = 120.0


@dataclass(frozen=True)
class ReplicaOptions:
    """Where and how wide `serve --ray` runs."""

    # As RayOptions.address: "auto", "local", "HOST:PORT", or None (Ray's own rule).
    address: str | None = None
    # None: one replica per node that has room for one. A replica searches with every core of
    # its node (FAISS, the encoder) and holds the whole index in memory, so a second one on
    # the same node doubles the memory for little more throughput.
    replicas: int | None = None
    cpus_per_replica: float = 1.0
    max_ongoing: int = MAX_ONGOING
    max_queued: int = MAX_QUEUED
    host: str = "127.0.0.1"
    port: int = 8000
    # Each replica batches the searches it holds as `serve` does (web.batcher).
    batch_window: float = BATCH_WINDOW
    max_batch: int = MAX_BATCH
    queue_size: int = QUEUE_SIZE

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise ValueError("replicas must be at least 1")
        if not (math.isfinite(self.cpus_per_replica) and self.cpus_per_replica > 0):
            raise ValueError("cpus_per_replica must be a positive number")
        if self.max_ongoing < 1 or self.max_queued < 1:
            raise ValueError("max_ongoing and max_queued must be at least 1")


@dataclass(frozen=True)
class ReplicaSpec:
    """What every replica builds its app from."""

    library: str  # the library folder, absolute, the same path on every node
    model: str | None = None
    allowed_hosts: tuple[str, ...] = field(default=("127.0.0.1", "localhost"))
    batch_window: float = BATCH_WINDOW
    max_batch: int = MAX_BATCH
    queue_size: int = QUEUE_SIZE


class ReplicaService:
    """Connects to (or starts) Ray, checks every node sees the library, then runs the app as a
    Ray Serve application until `close`. A local Ray (`address="local"`) lives as long as this
    object; on an existing cluster only this application is removed at the end (and Serve
    itself when nothing else runs on it)."""

    def __init__(
        self,
        library: str | os.PathLike[str],
        model: str | None = None,
        *,
        options: ReplicaOptions | None = None,
        allowed_hosts: list[str] | None = None,
    ) -> None:
        self.options = options or ReplicaOptions()
        self.spec = ReplicaSpec(
            str(Path(library).resolve()),
            model,
            tuple(allowed_hosts or ("127.0.0.1", "localhost")),
            self.options.batch_window,
            self.options.max_batch,
            self.options.queue_size,
        )
        self.replicas = 0
        # The node whose proxy is the entry point (Ray's head), and whether it is this machine.
        self.head = ""
        self.head_is_here = True
        self._ray: Any = None
        self._serve: Any = None
        self._owns_ray = False
        self._started_serve = False
        self._deployed = False

    def __enter__(self) -> ReplicaService:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        host = self.options.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.options.port}/"

    def start(self) -> None:
        """Deploy the replicas; returns once they answer (every one warm). ClusterSetupError
        when the cluster cannot run them as asked (Ray missing, no cluster there, a node
        without the library, no room); ClusterError when the replicas fail to start."""
        ray = require_ray()
        try:
            from ray import serve
        except ImportError:
            raise ClusterSetupError(
                f"--ray needs Ray Serve on this machine: {INSTALL_LINE}"
            ) from None
        self._ray, self._serve = ray, serve
        opts = self.options
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            connect(
                ray,
                RayOptions(
                    address=opts.address,
                    workers=opts.replicas,
                    cpus_per_worker=opts.cpus_per_replica,
                ),
                command="serve",
            )
        try:
            nodes = self._check_nodes()
            self.head, self.head_is_here = _head(ray)
            self.replicas = opts.replicas or nodes
            self._check_room()
            self._started_serve = not _serve_running()
            if not self._started_serve and APP_NAME in serve.status().applications:
                raise ClusterSetupError(
                    f"the Ray cluster already serves {APP_NAME} (another serve --ray?); stop "
                    "it first, or serve from another cluster"
                )
            serve.start(
                proxy_location="HeadOnly",
                http_options={"host": opts.host, "port": opts.port},
            )
            self._deployed = True
            try:
                serve.run(self._application(), name=APP_NAME, route_prefix="/", blocking=False)
            except RuntimeError as exc:
                raise self._start_failure(exc) from None
        except BaseException:
            self.close()
            raise

    def _start_failure(self, exc: BaseException) -> ClusterError:
        """Why the replicas did not start, in one line: the error a replica's start raised
        (Ray keeps its traceback in the deployment's status), as ours when it is ours."""
        try:
            app = self._serve.status().applications.get(APP_NAME)
            reports = [d.message for d in app.deployments.values()] if app else []
        except Exception:  # the cluster is gone too: Ray's own words
            reports = []
        for report in [*reports, str(exc)]:
            found = _error_line(report or "")
            if found is None:
                continue
            name, message = found
            if name == ClusterSetupError.__name__:
                return ClusterSetupError(message)
            return ClusterError(f"the replicas did not start: {message}")
        return ClusterError(f"the replicas did not start: {first_line(exc)}")

    def ready(self) -> tuple[int, int]:
        """(replicas running, replicas asked for). ClusterError when Ray cannot say (the
        cluster is gone)."""
        try:
            status = self._serve.status()
            app = status.applications.get(APP_NAME)
            states = app.deployments[DEPLOYMENT_NAME].replica_states if app else {}
        except Exception as exc:
            raise ClusterError(f"the Ray cluster stopped answering ({first_line(exc)})") from None
        return int(states.get("RUNNING", 0)), self.replicas

    def close(self) -> None:
        """Remove the application (and Serve and a local Ray this object started)."""
        ray, serve = self._ray, self._serve
        if ray is None or not ray.is_initialized():
            return
        try:
            if self._deployed:
                serve.delete(APP_NAME)  # the replicas finish what they answer, then close
            private = self._owns_ray and self.options.address == "local"
            if self._started_serve and not private:
                serve.shutdown()  # (a private Ray goes whole below, Serve with it)
        except Exception:  # the cluster may be gone already: nothing left to remove
            pass
        finally:
            if self._owns_ray:
                ray.shutdown()
            self._ray = None

    # -- set-up ------------------------------------------------------------------------------

    def _nodes(self) -> list[dict[str, Any]]:
        """Alive nodes with room for one replica."""
        return [
            node
            for node in self._ray.nodes()
            if node.get("Alive")
            and node.get("Resources", {}).get("CPU", 0) >= self.options.cpus_per_replica
        ]

    def _check_nodes(self) -> int:
        """Every node that may hold a replica sees the library folder, or one line naming the
        first that does not; the number of such nodes."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self._ray
        probe = ray.remote(library_problem)
        refs = {}
        for node in self._nodes():
            strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            task = probe.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy)
            refs[task.remote(self.spec.library)] = node
        if not refs:
            raise ClusterSetupError(
                f"no node of the Ray cluster has room for a replica "
                f"({self.options.cpus_per_replica:g} CPUs); add nodes or start one with CPUs"
            )
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=PROBE_SECONDS)
        answered = 0
        for ref in ready:
            try:
                problem = ray.get(ref)
            except ray.exceptions.RayError:
                continue  # a node that died since Ray listed it: Serve places nothing there
            if problem:
                raise ClusterSetupError(problem)
            answered += 1
        if not answered:
            raise ClusterError("no node of the Ray cluster answered the start-up check")
        return answered

    def _check_room(self) -> None:
        cpus = self._ray.cluster_resources().get("CPU", 0)
        want = self.replicas * self.options.cpus_per_replica
        if cpus + 1e-9 < want:
            raise ClusterSetupError(
                f"the Ray cluster ({cpus:g} CPUs) has no room for {self.replicas} replicas of "
                f"{self.options.cpus_per_replica:g} CPUs; ask for fewer with --replicas"
            )

    def _application(self) -> Any:
        serve = self._serve
        opts = self.options
        extra: dict[str, Any] = {}
        try:  # Retry-After on the 503 of a full queue (recent Ray Serve; a bare 503 before)
            from ray.serve.config import BackpressureConfig

            extra["backpressure_config"] = BackpressureConfig(
                status_code=503, retry_after_s=RETRY_AFTER
            )
        except ImportError:
            pass
        deployment = serve.deployment(
            serve.ingress(_builder(self.spec))(_Replica),
            name=DEPLOYMENT_NAME,
            num_replicas=self.replicas,
            max_ongoing_requests=opts.max_ongoing,
            max_queued_requests=opts.max_queued,
            **extra,
            ray_actor_options={
                "num_cpus": opts.cpus_per_replica,
                "runtime_env": {"env_vars": worker_env(0.0)},
            },
            health_check_period_s=5,
        )
        return deployment.bind()


def _head(ray: Any) -> tuple[str, bool]:
    """The head node's address (where `proxy_location="HeadOnly"` puts the entry point), and
    whether it is this machine."""
    here = ray.util.get_node_ip_address()
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            head = node.get("NodeManagerAddress", "")
            return head, head == here
    return here, True


def _serve_running() -> bool:
    """Whether Serve already runs on the cluster (then it is left running at the end)."""
    import ray

    try:
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    except ImportError:  # another Ray: Serve's own names
        SERVE_CONTROLLER_NAME, SERVE_NAMESPACE = "SERVE_CONTROLLER_ACTOR", "serve"
    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def _error_line(report: str) -> tuple[str, str] | None:
    """The (class name, message) of the error a traceback in Ray's report ends with."""
    for line in reversed(report.strip().splitlines()):
        found = re.match(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", line.strip())
        if found:
            return found.group(1).rpartition(".")[2], found.group(2)
    return None


# -- on a replica -------------------------------------------------------------------------------


def library_problem(library: str) -> str | None:
    """Why this node cannot serve the library folder (one line naming the node), or None."""
    from db.engine import DB_NAME

    folder = Path(library)
    try:
        usable = folder.is_dir() and os.access(folder / DB_NAME, os.R_OK)
    except OSError:
        usable = False
    if usable:
        return None
    return (
        f"a Ray node on {socket.gethostname()} does not see the library {folder} (missing or "
        "unreadable there); every node must mount it at the same path"
    )


def _builder(spec: ReplicaSpec) -> Any:
    """The function Ray Serve calls on each replica to make its app (a plain function, as
    `serve.ingress` wants; Ray ships it with `spec` inside)."""

    def build() -> Any:
        return replica_app(spec)

    return build


def replica_app(spec: ReplicaSpec) -> Any:
    """One replica's app: `create_app`'s, over the library opened read-only here, its text
    tower loaded and compiled before the replica reports ready."""
    problem = library_problem(spec.library)
    if problem:
        raise ClusterSetupError(problem)
    from web.app import create_app

    app = create_app(
        spec.library,
        spec.model,
        warm=False,
        allowed_hosts=list(spec.allowed_hosts),
        batch_window=spec.batch_window,
        max_batch=spec.max_batch,
        queue_size=spec.queue_size,
        headers={REPLICA_HEADER: _replica_id()},
    )
    app.state.backend.warm()  # errors here fail the replica's start: Ray reports and retries

    app.state.library = spec.library
    app.state.replica_ready = True
    return app


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # built outside a replica (a test of the app itself)
        return f"{socket.gethostname()}-{os.getpid()}"


class _Replica:
    """The deployment's class; the app itself comes from `_builder` (see `serve.ingress`)."""

    def check_health(self) -> None:
        """Ray asks this every few seconds: unready until the app is built and its text tower
        warm (`replica_app`), unhealthy once the library folder is gone from this node (Ray
        then replaces the replica)."""
        app = getattr(self, "app", None)
        if app is None or not getattr(app.state, "replica_ready", False):
            raise RuntimeError("the replica's app is not built yet")
        problem = library_problem(app.state.library)
        if problem:
            raise RuntimeError(problem)
