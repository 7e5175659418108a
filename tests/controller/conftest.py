"""Fixtures for the controller's kopf, sync and Kubernetes executor tests: an emulated
API server (kmock), stores on local disk, workloads that report at once, and kopf
running the dyff handlers (kopf.testing.KopfRunner)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import kmock
import kopf
import pytest
import pytest_asyncio
from kopf.testing import KopfRunner

from controller.executors import WorkKey
from controller.kopf_adapter import Controller, build_registry, configure
from controller.reconcilers.common import Workload, WorkState
from dyff import layout
from dyff.errors import NotFound
from dyff.schema import (
    Dataset,
    Evaluation,
    MetricsSummary,
    Model,
    Progress,
    Shard,
    entity_type,
)
from dyff.stores.blobs import BlobStore
from dyff.stores.file import FileBlobStore
from dyff.stores.records import RecordStore
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories
from tests.controller.kmock_cluster import Cluster, serve

T = TypeVar("T")
EVALUATIONS = "dyff.io/v1alpha1/evaluations"
MODELS = "dyff.io/v1alpha1/models"
DATASETS = "dyff.io/v1alpha1/datasets"
JOBS = "batch/v1/jobs"


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """An emulated cluster where the namespace of account acme already exists (objects
    go only into namespaces that exist)."""
    async with serve() as c:
        await create_namespace(c, "acme")
        yield c
        # Kubernetes errors (404, 409, ...) are answers; anything else is a bug in the emulator.
        assert [e for e in c.errors if not isinstance(e, kmock.KubernetesError)] == []


@pytest.fixture
def records(tmp_path: Path) -> RecordStore:
    return SqliteRecordStore(tmp_path / "records.db")


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return FileBlobStore(tmp_path / "blobs")


def digest_of(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def report(records: RecordStore, blobs: BlobStore, key: WorkKey, workload: str) -> None:
    """What the real workload writes when it is done: its blobs, then its record's status
    (phase, results, Ready, observedGeneration), in one `mutate`."""
    kind, account, name = key
    entity = records.find(entity_type(kind), account, name)
    if entity is None or entity.metadata.deletion_timestamp is not None:
        return
    generation = entity.metadata.generation
    if workload == "ingest_model":
        digest = digest_of(account, name, "model")
        blobs.put(layout.bento_key(account, digest), b"bento " + digest.encode())

        def change(m: Any) -> None:
            st = m.status
            st.phase, st.digest, st.labels = "Ready", digest, ["zero", "one"]
            st.bento_uri = blobs.uri(layout.bento_key(account, digest))
            st.observed_generation = generation
            st.set_condition("Ready", "True", "Packaged", "packaged", generation)

    elif workload == "ingest_dataset":
        shard = digest_of(account, name, "shard")
        blobs.put(layout.shard_key(account, shard), b"parquet " + shard.encode())

        def change(m: Any) -> None:
            st = m.status
            st.phase, st.rows, st.labels = "Ready", 10, ["zero", "one"]
            factories.list_shards(blobs, m, [Shard(sha256=shard, rows=10, first_row=0)])
            st.observed_generation = generation
            st.set_condition("Ready", "True", "Ingested", "10 rows", generation)

    else:
        assert isinstance(entity, Evaluation)
        uid = entity.metadata.uid or ""
        prediction = f"{layout.account_prefix(account)}/predictions/x/y/{name}.parquet"
        blobs.put(prediction, b"predictions")
        blobs.put(
            layout.manifest_key(account, name, uid), json.dumps({"files": [prediction]}).encode()
        )
        blobs.put(layout.metrics_key(account, name, uid), b'{"accuracy": 0.9}')

        def change(m: Any) -> None:
            st = m.status
            st.phase, st.message = "Complete", "10 rows"
            st.progress = Progress(shards_total=1, shards_done=1, rows=10)
            st.metrics = MetricsSummary(accuracy=0.9, top5_accuracy=1.0, macro_f1=0.85, ece=0.05)
            st.results_uri = blobs.uri(layout.evaluation_prefix(account, name, uid))
            st.observed_generation = generation
            st.set_condition("Ready", "True", "Complete", "10 rows", generation)

    with suppress(NotFound):  # deleted meanwhile: nothing to report to
        records.mutate(entity_type(kind), account, name, change)


class FakeWorkloads:
    """An Executor whose workloads report at once, writing records and blobs as the real
    ones do; workloads named in `hold` keep running until `finish`. Its state survives a
    controller restart, as Jobs do."""

    runs_containers = True

    def __init__(self, records: RecordStore, blobs: BlobStore, hold: tuple[str, ...] = ()) -> None:
        self.records = records
        self.blobs = blobs
        self.hold = set(hold)
        self.work: dict[WorkKey, tuple[Workload, int, str]] = {}
        self.started: list[tuple[WorkKey, str, int]] = []
        self.stopped: list[WorkKey] = []
        self._lock = threading.Lock()

    def state(self, key: WorkKey) -> WorkState:
        with self._lock:
            found = self.work.get(key)
        if found is None:
            return WorkState()
        return WorkState(found[2], found[1])  # type: ignore[arg-type]

    def start(self, key: WorkKey, workload: Workload, generation: int) -> None:
        with self._lock:
            self.started.append((key, workload, generation))
            self.work[key] = (workload, generation, "running")
        if workload not in self.hold:
            self.finish(key)

    def finish(self, key: WorkKey) -> None:
        workload, generation, _ = self.work[key]
        report(self.records, self.blobs, key, workload)
        with self._lock:
            self.work[key] = (workload, generation, "succeeded")

    def stop(self, key: WorkKey) -> None:
        with self._lock:
            self.stopped.append(key)
            self.work.pop(key, None)

    def work_keys(self) -> list[WorkKey]:
        with self._lock:
            return list(self.work)

    def close(self) -> None:
        pass


@asynccontextmanager
async def operator(controller: Controller, cluster: Cluster) -> AsyncIterator[Controller]:
    """`kopf run --standalone --all-namespaces` with dyff's handlers and settings (those
    `controller.kopf_adapter.run` uses) against `cluster` until the block ends, by kopf's
    test runner: in a thread with its own event loop, as in a controller process. The
    emulated cluster lives in the test's loop, so the runner is stopped from a thread."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=cluster.api_url, insecure=True)

    settings = kopf.OperatorSettings()
    configure(settings)
    runner = KopfRunner(
        ["run", "--standalone", "--all-namespaces", "--quiet"],
        registry=build_registry(controller, registry),
        settings=settings,
        timeout=20,
    )
    with process_state_restored():
        runner.__enter__()  # returns at once; kopf starts in its thread
        try:
            yield controller
        finally:
            await asyncio.to_thread(runner.__exit__, None, None, None)


@contextmanager
def process_state_restored() -> Iterator[None]:
    """`kopf run` sets process-wide state: the default registry, and logging (a root
    handler writing to the runner's captured stderr, levels). Put it back afterwards."""
    registry = kopf.get_default_registry()
    root, aio = logging.getLogger(), logging.getLogger("asyncio")
    handlers, level, aio_handlers, aio_propagate = (
        root.handlers[:],
        root.level,
        aio.handlers[:],
        aio.propagate,
    )
    try:
        yield
    finally:
        kopf.set_default_registry(registry)
        root.handlers[:], aio.handlers[:], aio.propagate = handlers, aio_handlers, aio_propagate
        root.setLevel(level)


async def eventually(check: Callable[[], T], timeout: float = 20.0, every: float = 0.05) -> T:
    """Poll `check` until it returns something truthy without failing an assertion."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not true within {timeout}s: {result!r}")
        await asyncio.sleep(every)


async def create_namespace(cluster: Cluster, name: str) -> None:
    """`kubectl create namespace NAME`."""
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    async with cluster.servers[0].client.post("/api/v1/namespaces", json=body) as response:
        assert response.status == 201, await response.text()


async def kubectl_apply(cluster: Cluster, doc: dict[str, Any]) -> dict[str, Any]:
    """Create a custom resource as kubectl or Argo CD would (a POST)."""
    meta = doc["metadata"]
    plural = {"Model": "models", "Dataset": "datasets", "Evaluation": "evaluations"}[doc["kind"]]
    url = f"/apis/dyff.io/v1alpha1/namespaces/{meta['namespace']}/{plural}"
    async with cluster.servers[0].client.post(url, json=doc) as response:
        assert response.status < 300, await response.text()
        return dict(await response.json())


async def kubectl_patch(cluster: Cluster, path: str, patch: dict[str, Any]) -> dict[str, Any]:
    headers = {"Content-Type": "application/merge-patch+json"}
    async with cluster.servers[0].client.patch(path, json=patch, headers=headers) as response:
        assert response.status < 300, await response.text()
        return dict(await response.json())


async def kubectl_delete(cluster: Cluster, path: str) -> None:
    async with cluster.servers[0].client.delete(path) as response:
        assert response.status < 300, await response.text()


__all__ = [
    "DATASETS",
    "EVALUATIONS",
    "JOBS",
    "MODELS",
    "Dataset",
    "FakeWorkloads",
    "Model",
    "create_namespace",
    "eventually",
    "kubectl_apply",
    "kubectl_delete",
    "kubectl_patch",
    "operator",
    "report",
]
