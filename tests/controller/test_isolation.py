"""Users' own model code against an emulated API server: the model server alone in its
Pod behind a NetworkPolicy, a user's Bento built into an image once, and Pods that
cannot start failing the evaluation at once (controller/executors/kubernetes.py)."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import pytest

from controller.executors.kubernetes import (
    JobSettings,
    KubernetesExecutor,
    pod_failure,
    signed_download_url,
)
from controller.executors.manifests import build_job_name
from controller.kube import KubeApi
from controller.reconcilers.common import WorkState
from dyff import layout
from dyff.schema import (
    EntityRef,
    Evaluation,
    EvaluationSpec,
    ImageSource,
    Model,
    ModelSource,
    ModelSpec,
    ObjectMeta,
    RunConfig,
    UriSource,
)
from dyff.stores.records import RecordStore
from tests.controller.conftest import JOBS
from tests.controller.kmock_cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = "registry.example/dyff-runtime:1.0"
MODEL_DIGEST = "cd" * 32
PUSHED = "sha256:" + "ef" * 32
REFERENCE = f"registry.example/classifier@sha256:{'ab' * 32}"
REPOSITORY = "registry.example/dyff-models"
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
KEY = ("Evaluation", "acme", "e1")
JOB = "dyff-eval-e1-1"
SERVER = "dyff-eval-e1-1-server"
BUILD = build_job_name(MODEL_DIGEST)
PODS = "v1/pods"
SERVICES = "v1/services"
POLICIES = "networking.k8s.io/v1/networkpolicies"
SERVICE_ACCOUNTS = "v1/serviceaccounts"


@pytest.fixture
def signed() -> list[str]:
    return []


@pytest.fixture
def executor(cluster: Cluster, records: RecordStore, signed: list[str]) -> KubernetesExecutor:
    settings = JobSettings(
        image=RUNTIME,
        records_url=records.url,
        blobs_url="gs://bucket/dyff",
        service_account_template=ROOT / "config/overlays/gke/workload-serviceaccount.yaml",
        image_repository=REPOSITORY,
    )

    def sign(key: str, ttl: datetime.timedelta) -> str:
        signed.append(key)
        return f"https://storage.example/{key}?X-Goog-Expires={int(ttl.total_seconds())}"

    return KubernetesExecutor(
        KubeApi(host=cluster.api_url), records, settings, sign_url=sign, clock=lambda: NOW
    )


def image_model(records: RecordStore) -> Model:
    source = ModelSource(form="image", image=ImageSource(reference=REFERENCE, port=8080))
    return ready_model(records, source, user_code=True)


def bento_model(records: RecordStore) -> Model:
    source = ModelSource(
        form="bento", uri=UriSource(uri="gs://bucket/user.bento", sha256=MODEL_DIGEST)
    )
    return ready_model(records, source, user_code=True)


def ready_model(records: RecordStore, source: ModelSource, user_code: bool) -> Model:
    records.create(
        Model(metadata=ObjectMeta(name="m1", namespace="acme"), spec=ModelSpec(source=source))
    )

    def ready(m: Model) -> None:
        m.status.phase, m.status.digest, m.status.user_code = "Ready", MODEL_DIGEST, user_code

    return records.mutate(Model, "acme", "m1", ready)


def an_evaluation(records: RecordStore, name: str = "e1", parallelism: int = 1) -> None:
    records.create(
        Evaluation(
            metadata=ObjectMeta(name=name, namespace="acme"),
            spec=EvaluationSpec(
                model=EntityRef(name="m1"),
                dataset=EntityRef(name="d1"),
                run=RunConfig(parallelism=parallelism),
            ),
        )
    )


async def start(executor: KubernetesExecutor, name: str = "e1") -> None:
    await asyncio.to_thread(executor.start, ("Evaluation", "acme", name), "evaluate", 1)


async def state(executor: KubernetesExecutor, name: str = "e1") -> WorkState:
    return await asyncio.to_thread(executor.state, ("Evaluation", "acme", name))


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


async def add_pod(
    cluster: Cluster, name: str, labels: dict[str, str], status: dict[str, Any]
) -> None:
    """A Pod as the Job controller or the executor made it, with what a kubelet reports."""
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}}
    async with cluster.servers[0].client.post("/api/v1/namespaces/acme/pods", json=body) as r:
        assert r.status < 300, await r.text()
    await cluster.set_status(PODS, "acme", name, status)


def server_objects(cluster: Cluster) -> list[Any]:
    return [cluster.read(r, "acme", SERVER) for r in (PODS, SERVICES, POLICIES)]


async def test_a_users_image_runs_alone_behind_a_policy_only_its_clients_pass(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    image_model(records)
    an_evaluation(records, parallelism=3)
    await start(executor)

    job = cluster.read(JOBS, "acme", JOB)
    assert not job["spec"].get("suspend")
    client_pod = job["spec"]["template"]
    client_labels = client_pod["metadata"]["labels"]
    assert "initContainers" not in client_pod["spec"], "no user code beside dyff's client"
    (client,) = client_pod["spec"]["containers"]
    assert env_of(client)["DYFF_MODEL_URL"] == f"http://{SERVER}.acme.svc:8080"

    server, service, policy = server_objects(cluster)
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
               for o in (server, service, policy))  # fmt: skip
    # Only the trusted client Pod has the storage ServiceAccount (Workload Identity).
    assert client_pod["spec"]["serviceAccountName"] == "dyff-workload"
    workload_sa = cluster.read(SERVICE_ACCOUNTS, "acme", "dyff-workload")
    assert "iam.gke.io/gcp-service-account" in workload_sa["metadata"]["annotations"]
    spec = server["spec"]
    assert spec["serviceAccountName"] == "dyff-model-server"
    server_sa = cluster.read(SERVICE_ACCOUNTS, "acme", "dyff-model-server")
    assert "iam.gke.io/gcp-service-account" not in (server_sa["metadata"].get("annotations") or {})
    assert server_sa["automountServiceAccountToken"] is False
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    (container,) = spec["containers"]
    assert container["image"] == REFERENCE
    sandbox = container["securityContext"]
    assert (sandbox["runAsUser"], sandbox["runAsGroup"], sandbox["runAsNonRoot"]) == (
        10001,
        10001,
        True,
    )
    assert sandbox["readOnlyRootFilesystem"] is True
    assert "DYFF_WORKLOAD_CONFIG" not in env_of(container), "no store URLs for user code"

    # The policy: selects the server (not the clients), admits only the clients (all
    # indexes of the Job share the template's labels) on the port, lets nothing out.
    assert selects(policy["spec"]["podSelector"]["matchLabels"], server["metadata"]["labels"])
    assert not selects(policy["spec"]["podSelector"]["matchLabels"], client_labels)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"] == []
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert selects(peer["podSelector"]["matchLabels"], client_labels)
    assert not selects(peer["podSelector"]["matchLabels"], server["metadata"]["labels"])
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert selects(service["spec"]["selector"], server["metadata"]["labels"])
    assert not selects(service["spec"]["selector"], client_labels)

    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    from tests.config import manifests as schemas

    version = schemas.latest_kubernetes()
    created = [job, server, service, policy, server_sa]
    assert [p for o in created for p in schemas.schema_problems(o, version)] == []


async def test_the_server_s_service_account_loses_an_identity_added_by_hand(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": "dyff-model-server",
            "annotations": {"iam.gke.io/gcp-service-account": "w@p.iam.gserviceaccount.com"},
        },
    }
    async with cluster.servers[0].client.post(
        "/api/v1/namespaces/acme/serviceaccounts", json=body
    ) as r:
        assert r.status < 300
    image_model(records)
    an_evaluation(records)
    await start(executor)
    account = cluster.read(SERVICE_ACCOUNTS, "acme", "dyff-model-server")
    assert "iam.gke.io/gcp-service-account" not in (account["metadata"].get("annotations") or {})


STUCK = [
    ("ErrImagePull", 'failed to pull image "registry.example/classifier": not found'),
    ("ImagePullBackOff", 'Back-off pulling image "registry.example/classifier"'),
    (
        "CreateContainerConfigError",
        "container has runAsNonRoot and image has non-numeric user (bentoml)",
    ),
    ("CrashLoopBackOff", "back-off 5m0s restarting failed container=model-server"),
    ("RunContainerError", "exec: bentoml: executable file not found in $PATH"),
    ("InvalidImageName", 'Failed to apply default image tag "Registry/X"'),
]


@pytest.mark.parametrize(("reason", "kubelet"), STUCK, ids=[s[0] for s in STUCK])
async def test_a_server_that_cannot_start_fails_the_evaluation_and_goes(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor, reason: str, kubelet: str
) -> None:
    image_model(records)
    an_evaluation(records)
    await start(executor)
    assert await state(executor) == WorkState("running", 1)
    waiting = {"waiting": {"reason": reason, "message": kubelet}}
    statuses = [{"name": "model-server", "ready": False, "state": waiting}]
    await cluster.set_status(
        PODS, "acme", SERVER, {"phase": "Pending", "containerStatuses": statuses}
    )

    assert await state(executor) == WorkState(
        "failed", 1, f"container model-server: {reason}: {kubelet}", "ModelServerFailed"
    )
    assert cluster.read(JOBS, "acme", JOB) is None
    assert server_objects(cluster) == [None, None, None]
    assert await state(executor) == WorkState()


async def test_a_sidecar_server_in_a_crash_loop_fails_the_evaluation(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    """dyff's own packaging keeps the sidecar, and its failures are seen the same way."""
    ready_model(
        records,
        ModelSource(form="bento", uri=UriSource(uri="gs://b/m.bento", sha256=MODEL_DIGEST)),
        False,
    )
    an_evaluation(records)
    await start(executor)
    labels = cluster.read(JOBS, "acme", JOB)["spec"]["template"]["metadata"]["labels"]
    crash = {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
    await add_pod(
        cluster,
        f"{JOB}-0-x1",
        labels,
        {
            "phase": "Pending",
            "initContainerStatuses": [{"name": "model-server", "state": {"waiting": crash}}],
            "containerStatuses": [
                {"name": "evaluate", "state": {"waiting": {"reason": "PodInitializing"}}}
            ],
        },
    )
    assert await state(executor) == WorkState(
        "failed",
        1,
        "container model-server: CrashLoopBackOff: back-off 40s restarting failed container",
        "ModelServerFailed",
    )
    assert cluster.read(JOBS, "acme", JOB) is None


@pytest.mark.parametrize(("minutes", "expected"), [(9, "running"), (11, "failed")])
async def test_a_server_never_ready_fails_after_the_start_timeout(
    cluster: Cluster,
    records: RecordStore,
    executor: KubernetesExecutor,
    minutes: int,
    expected: str,
) -> None:
    image_model(records)
    an_evaluation(records)
    await start(executor)
    started = (NOW - datetime.timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")
    loading = {"name": "model-server", "ready": False, "started": False,
               "state": {"running": {"startedAt": started}}}  # fmt: skip
    await cluster.set_status(
        PODS, "acme", SERVER,
        {"phase": "Running", "startTime": started, "containerStatuses": [loading]},
    )  # fmt: skip
    work = await state(executor)
    assert work.phase == expected
    if expected == "failed":
        assert work.reason == "ModelServerFailed"
        assert work.message == "container model-server: not ready 600 s after its Pod started"
        assert server_objects(cluster) == [None, None, None]
    else:
        assert cluster.read(PODS, "acme", SERVER) is not None


async def test_stop_deletes_the_job_and_the_server_pod_service_and_policy(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    image_model(records)
    an_evaluation(records)
    await start(executor)
    assert all(o is not None for o in server_objects(cluster))
    await asyncio.to_thread(executor.stop, KEY)
    assert cluster.read(JOBS, "acme", JOB) is None
    assert server_objects(cluster) == [None, None, None]


async def test_a_finished_evaluation_takes_its_server_down(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    image_model(records)
    an_evaluation(records)
    await start(executor)
    complete = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
    await cluster.set_status(JOBS, "acme", JOB, complete)
    assert await state(executor) == WorkState("succeeded", 1)
    assert server_objects(cluster) == [None, None, None]
    assert cluster.read(JOBS, "acme", JOB) is not None, "the Job stays until its TTL"


def build_status(state: dict[str, Any]) -> dict[str, Any]:
    return {"name": "build", "state": state}


async def finish_build(cluster: Cluster, termination: str, exit_code: int = 0) -> None:
    terminated = {"exitCode": exit_code, "reason": "Completed", "message": termination}
    await add_pod(
        cluster,
        f"{BUILD}-x1",
        {"batch.kubernetes.io/job-name": BUILD},
        {"phase": "Succeeded", "containerStatuses": [build_status({"terminated": terminated})]},
    )
    condition = "Complete" if exit_code == 0 else "Failed"
    conditions = [{"type": condition, "status": "True", "message": "BackoffLimitExceeded"}]
    await cluster.set_status(JOBS, "acme", BUILD, {"conditions": conditions})


async def test_a_users_bento_is_built_once_into_an_image_then_served_pinned(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor, signed: list[str]
) -> None:
    bento_model(records)
    an_evaluation(records)
    await start(executor)

    # The build: fetched by signed URL, pushed to the account's image; the Job waits.
    build = cluster.read(JOBS, "acme", BUILD)
    assert signed == [layout.bento_key("acme", MODEL_DIGEST)]
    assert build["spec"]["template"]["spec"]["serviceAccountName"] == "dyff-image-builder"
    assert cluster.read(POLICIES, "acme", BUILD)["spec"]["ingress"] == []
    job = cluster.read(JOBS, "acme", JOB)
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["annotations"] == {"dyff.io/image-build": f"acme/{BUILD}"}
    assert await state(executor) == WorkState("running", 1)
    assert cluster.read(PODS, "acme", SERVER) is None

    await finish_build(cluster, PUSHED)
    assert await state(executor) == WorkState("running", 1)
    image = f"{REPOSITORY}/acme@{PUSHED}"
    assert cluster.read(PODS, "acme", SERVER)["spec"]["containers"][0]["image"] == image
    job = cluster.read(JOBS, "acme", JOB)
    assert job["spec"]["suspend"] is False
    assert job["metadata"]["annotations"]["dyff.io/model-image"] == image
    build_annotations = cluster.read(JOBS, "acme", BUILD)["metadata"]["annotations"]
    assert build_annotations["dyff.io/image-digest"] == PUSHED

    # A second evaluation of the same Bento: no second build, served at once.
    an_evaluation(records, "e2")
    await start(executor, "e2")
    assert signed == [layout.bento_key("acme", MODEL_DIGEST)]
    builds = [j for j in cluster.items(JOBS) if j["metadata"]["name"].startswith("dyff-build-")]
    assert len(builds) == 1
    second = cluster.read(JOBS, "acme", "dyff-eval-e2-1")
    assert not second["spec"].get("suspend")
    second_server = cluster.read(PODS, "acme", "dyff-eval-e2-1-server")
    assert second_server["spec"]["containers"][0]["image"] == image


@pytest.mark.parametrize(
    ("termination", "exit_code", "message"),
    [
        ("error building image: RUN pip install", 1, "BackoffLimitExceeded"),
        ("not a digest", 0, "reported no image digest"),
    ],
)
async def test_a_failed_build_fails_the_evaluation_and_is_built_again_next_time(
    cluster: Cluster,
    records: RecordStore,
    executor: KubernetesExecutor,
    termination: str,
    exit_code: int,
    message: str,
) -> None:
    bento_model(records)
    an_evaluation(records)
    await start(executor)
    await finish_build(cluster, termination, exit_code)
    work = await state(executor)
    assert work.phase == "failed" and work.reason == "ImageBuildFailed"
    assert message in work.message
    assert cluster.read(JOBS, "acme", BUILD) is None, "the next evaluation builds again"
    assert cluster.read(JOBS, "acme", JOB) is None


async def test_a_builder_that_cannot_start_fails_the_evaluation(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    bento_model(records)
    an_evaluation(records)
    await start(executor)
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "kaniko"'}
    await add_pod(
        cluster, f"{BUILD}-x1", {"batch.kubernetes.io/job-name": BUILD},
        {"phase": "Pending", "containerStatuses": [build_status({"waiting": waiting})]},
    )  # fmt: skip
    assert await state(executor) == WorkState(
        "failed",
        1,
        'container build: ImagePullBackOff: Back-off pulling image "kaniko"',
        "ImageBuildFailed",
    )


async def test_without_an_image_repository_a_users_bento_fails_naming_the_setting(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    executor.settings.image_repository = None
    bento_model(records)
    an_evaluation(records)
    await start(executor)
    assert [j["metadata"]["name"] for j in cluster.items(JOBS)] == [JOB], "nothing is built"
    work = await state(executor)
    assert work.phase == "failed" and "DYFF_IMAGE_REPOSITORY" in work.message
    assert work.reason == "ModelBuildUnavailable" and "DYFF_IMAGE_REPOSITORY" in work.message


def a_pod(status: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p", **meta}, "status": status}


def test_only_reasons_that_waiting_cannot_cure_fail_a_pod() -> None:
    def waiting(reason: str, name: str = "evaluate") -> list[dict[str, Any]]:
        return [{"name": name, "state": {"waiting": {"reason": reason, "message": "m"}}}]

    fine = [
        a_pod({"phase": "Pending", "containerStatuses": waiting("PodInitializing")}),
        a_pod({"phase": "Pending", "containerStatuses": waiting("ContainerCreating")}),
        # Finished or going: not this pass's concern.
        a_pod({"phase": "Failed", "containerStatuses": waiting("ErrImagePull")}),
        a_pod(
            {"phase": "Pending", "containerStatuses": waiting("ErrImagePull")},
            deletionTimestamp="2026-12-01T00:00:00Z",
        ),
        # Not started yet (unschedulable, say): no start timeout runs.
        a_pod({"phase": "Pending", "containerStatuses": waiting("x", "model-server")}),
    ]
    assert pod_failure(fine, NOW, 600) is None
    stuck = a_pod({"phase": "Pending", "containerStatuses": waiting("ErrImagePull", "ingest")})
    assert pod_failure([*fine, stuck], NOW, 600) == (
        "WorkloadPodFailed: container ingest: ErrImagePull: m"
    )
    # A server Pod that failed (evicted) leaves the clients nothing to talk to.
    evicted = a_pod(
        {"phase": "Failed", "reason": "Evicted", "message": "low on memory"},
        labels={"dyff.io/role": "model-server"},
    )
    assert pod_failure([evicted], NOW, 600) == (
        "ModelServerFailed: container model-server: Failed: low on memory"
    )


def test_the_builder_s_bento_url_reads_one_object_without_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dyff.stores.file import FileBlobStore
    from dyff.stores.gcs import GcsBlobStore

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://gcs:9023")
    store = GcsBlobStore("bucket", prefix="dyff")
    key = layout.bento_key("acme", MODEL_DIGEST)
    # The emulator checks no signatures: its plain media URL of the prefixed object.
    assert signed_download_url(store, key, datetime.timedelta(hours=1)) == (
        "http://gcs:9023/download/storage/v1/b/bucket/o/"
        f"dyff%2Faccounts%2Facme%2Fbentos%2F{MODEL_DIGEST}.bento?alt=media"
    )
    assert signed_download_url(FileBlobStore(tmp_path), key, datetime.timedelta(hours=1)) is None


async def test_fsck_lists_the_jobs_of_entities_gone_and_fix_ends_them(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    """`dyff admin fsck` on a cluster: the Job (and model server) of an evaluation whose
    record is gone is listed, and --fix deletes them; live work is left alone."""
    from dyff import fsck
    from dyff.stores.file import FileBlobStore

    image_model(records)
    an_evaluation(records)
    an_evaluation(records, "e2")
    await start(executor)
    await start(executor, "e2")
    records.delete(Evaluation, "acme", "e1")
    blobs = FileBlobStore(tmp_path / "blobs")
    found = await asyncio.to_thread(fsck.find_orphans, records, blobs, [executor])
    work = [o for o in found if o.store == "work"]
    assert [(o.kind, o.account, o.name) for o in work] == [("Job", "acme", "Evaluation/e1")]
    assert await asyncio.to_thread(fsck.fix, records, blobs, work, [executor]) == 1
    assert cluster.read(JOBS, "acme", JOB) is None
    assert server_objects(cluster) == [None, None, None]
    assert await asyncio.to_thread(executor.work_keys) == [("Evaluation", "acme", "e2")]
