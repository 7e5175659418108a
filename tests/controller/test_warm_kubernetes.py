"""Warm model servers on Kubernetes (DYFF_WARM_IDLE_S > 0), against an emulated API
server: a Deployment, Service and NetworkPolicy per model and serving settings in the
evaluation's namespace, shared by its evaluations, scaled to zero when idle, back to one
when needed, removed with its model or when it cannot serve; isolation as for a server
per evaluation (controller/executors/kubernetes.py, manifests.get_warm_deployment)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from controller.executors.kubernetes import JobSettings, KubernetesExecutor
from controller.executors.manifests import LABEL_USES_WARM, LABEL_WARM, MODEL_SERVER
from controller.kube import KubeApi
from controller.reconcilers.common import WorkState
from dyff.schema import (
    EntityRef,
    Evaluation,
    EvaluationSpec,
    ImageSource,
    ModelSource,
    ObjectMeta,
    RunConfig,
    UriSource,
)
from dyff.stores.records import RecordStore
from tests.controller.conftest import JOBS
from tests.controller.kmock_cluster import Cluster
from tests.controller.test_isolation import (
    MODEL_DIGEST,
    NOW,
    PODS,
    POLICIES,
    REFERENCE,
    ROOT,
    RUNTIME,
    SERVICES,
    add_pod,
    env_of,
    ready_model,
    selects,
)

DEPLOYMENTS = "apps/v1/deployments"
IDLE = datetime.timedelta(minutes=5)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def executor(cluster: Cluster, records: RecordStore, clock: Clock) -> KubernetesExecutor:
    settings = JobSettings(
        image=RUNTIME,
        records_url=records.url,
        blobs_url="gs://bucket/dyff",
        service_account_template=ROOT / "config/overlays/gke/workload-serviceaccount.yaml",
        warm_idle_s=IDLE.total_seconds(),
    )
    return KubernetesExecutor(KubeApi(host=cluster.api_url), records, settings, clock=clock)


def own_model(records: RecordStore) -> None:
    source = ModelSource(form="bento", uri=UriSource(uri="gs://b/m.bento", sha256=MODEL_DIGEST))
    ready_model(records, source, False)


def image_model(records: RecordStore) -> None:
    source = ModelSource(form="image", image=ImageSource(reference=REFERENCE, port=8080))
    ready_model(records, source, True)


def evaluation(records: RecordStore, name: str, batch_size: int = 32) -> None:
    records.create(
        Evaluation(
            metadata=ObjectMeta(name=name, namespace="acme"),
            spec=EvaluationSpec(
                model=EntityRef(name="m1"),
                dataset=EntityRef(name="d1"),
                run=RunConfig(batch_size=batch_size),
            ),
        )
    )


async def start(cluster: Cluster, executor: KubernetesExecutor, name: str) -> dict[str, Any]:
    await asyncio.to_thread(executor.start, ("Evaluation", "acme", name), "evaluate", 1)
    job = cluster.read(JOBS, "acme", f"dyff-eval-{name}-1")
    assert job is not None
    return job


async def state(executor: KubernetesExecutor, name: str) -> WorkState:
    return await asyncio.to_thread(executor.state, ("Evaluation", "acme", name))


def warm_of(job: dict[str, Any]) -> str:
    return job["spec"]["template"]["metadata"]["labels"][LABEL_USES_WARM]


def warm_objects(cluster: Cluster, name: str) -> list[Any]:
    return [cluster.read(r, "acme", name) for r in (DEPLOYMENTS, SERVICES, POLICIES)]


async def finish(cluster: Cluster, job: str, at: datetime.datetime) -> None:
    condition = {"type": "Complete", "status": "True", "lastTransitionTime": at.isoformat()}
    await cluster.set_status(JOBS, "acme", job, {"conditions": [condition], "succeeded": 1})


async def test_evaluations_of_one_model_share_one_warm_server(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    own_model(records)
    for name in ("e1", "e2", "e3"):
        evaluation(records, name, batch_size=64 if name == "e3" else 32)
    job1, job2, job3 = [await start(cluster, executor, n) for n in ("e1", "e2", "e3")]
    warm = warm_of(job1)
    assert warm_of(job2) == warm, "same model, same settings: the same server"
    assert warm_of(job3) != warm, "another batch size is another server"

    deployment, service, policy = warm_objects(cluster, warm)
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    (server,) = pod["spec"]["containers"]
    assert server["name"] == MODEL_SERVER and server["image"] == RUNTIME
    assert "restartPolicy" not in server  # a Pod's container, not a sidecar
    assert env_of(server)["DYFF_CHUNK_SIZE"] == "32"
    # The client: no sidecar of its own, the warm Service's URL, the label the policy admits.
    client_pod = job1["spec"]["template"]
    assert "initContainers" not in client_pod["spec"]
    (client,) = client_pod["spec"]["containers"]
    assert env_of(client)["DYFF_MODEL_URL"] == f"http://{warm}.acme.svc:3000"
    (rule,) = policy["spec"]["ingress"]
    assert selects(rule["from"][0]["podSelector"]["matchLabels"], client_pod["metadata"]["labels"])
    assert not selects(
        rule["from"][0]["podSelector"]["matchLabels"],
        job3["spec"]["template"]["metadata"]["labels"],
    )
    # dyff's own service reads its Bento from the store, as the sidecar did.
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert pod["spec"]["serviceAccountName"] == "dyff-workload"


async def test_a_users_image_is_warm_under_the_same_isolation(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    image_model(records)
    evaluation(records, "e1")
    job = await start(cluster, executor, "e1")
    assert not job["spec"].get("suspend")
    deployment, _, policy = warm_objects(cluster, warm_of(job))
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["image"] == REFERENCE
    assert pod["serviceAccountName"] == "dyff-model-server"
    assert pod["automountServiceAccountToken"] is False
    env = env_of(server)
    assert "DYFF_WORKLOAD_CONFIG" not in env and "gs://bucket/dyff" not in str(env)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == []


async def test_an_idle_server_scales_to_zero_and_back(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor, clock: Clock
) -> None:
    own_model(records)
    evaluation(records, "e1")
    warm = warm_of(await start(cluster, executor, "e1"))

    clock.now = NOW + 2 * IDLE
    assert await asyncio.to_thread(executor.sweep_warm) == [], "e1 still runs"
    await finish(cluster, "dyff-eval-e1-1", NOW + IDLE)
    clock.now = NOW + IDLE + IDLE / 2
    assert await asyncio.to_thread(executor.sweep_warm) == [], "idle only half the period"
    clock.now = NOW + 2 * IDLE + datetime.timedelta(seconds=1)
    assert await asyncio.to_thread(executor.sweep_warm) == [f"acme/{warm}"]
    assert cluster.read(DEPLOYMENTS, "acme", warm)["spec"]["replicas"] == 0
    assert await asyncio.to_thread(executor.sweep_warm) == []

    evaluation(records, "e2")
    assert warm_of(await start(cluster, executor, "e2")) == warm
    deployment = cluster.read(DEPLOYMENTS, "acme", warm)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["metadata"]["annotations"]["dyff.io/last-used"] == clock.now.isoformat()


async def test_deleting_the_model_deletes_its_warm_servers(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    own_model(records)
    evaluation(records, "e1")
    warm = warm_of(await start(cluster, executor, "e1"))
    assert all(o is not None for o in warm_objects(cluster, warm))
    await asyncio.to_thread(executor.stop, ("Evaluation", "acme", "e1"))
    assert all(o is not None for o in warm_objects(cluster, warm)), "kept for the next"
    await asyncio.to_thread(executor.stop, ("Model", "acme", "m1"))
    assert warm_objects(cluster, warm) == [None, None, None]


async def test_a_warm_server_in_a_crash_loop_fails_the_evaluation_and_goes(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    own_model(records)
    evaluation(records, "e1")
    warm = warm_of(await start(cluster, executor, "e1"))
    assert await state(executor, "e1") == WorkState("running", 1)
    crash = {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
    statuses = [{"name": MODEL_SERVER, "ready": False, "state": {"waiting": crash}}]
    await add_pod(
        cluster,
        f"{warm}-abc",
        {LABEL_WARM: warm},
        {"phase": "Running", "containerStatuses": statuses},
    )
    work = await state(executor, "e1")
    assert (work.phase, work.reason) == ("failed", "ModelServerFailed")
    assert cluster.read(JOBS, "acme", "dyff-eval-e1-1") is None
    assert warm_objects(cluster, warm) == [None, None, None]
    assert cluster.read(PODS, "acme", f"{warm}-abc") is not None  # the Deployment's to remove
