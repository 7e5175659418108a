"""The Kubernetes executor against an emulated API server: the Jobs it creates, how it
reads their status, how it stops them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from controller.executors.kubernetes import JobSettings, KubernetesExecutor
from controller.executors.manifests import MAX_JOB_NAME, job_name
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
    Resources,
    RunConfig,
)
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore
from dyff.workloads.common import WorkloadConfig
from dyff.workloads.pod import workload_config_file
from tests import factories
from tests.controller.conftest import JOBS, create_namespace, kubectl_apply
from tests.controller.kmock_cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.example/dyff-runtime:1.0"
DIGEST = "cd" * 32


@pytest.fixture
def executor(cluster: Cluster, records: RecordStore, blobs: BlobStore) -> KubernetesExecutor:
    settings = JobSettings(
        image=IMAGE,
        records_url=records.url,
        blobs_url=blobs.url,
        service_account_template=ROOT / "config/base/workload-serviceaccount.yaml",
        env={"DATASTORE_EMULATOR_HOST": "dyff-datastore:8081"},
    )
    return KubernetesExecutor(KubeApi(host=cluster.api_url), records, settings)


def ready_model(records: RecordStore, name: str = "m1", **spec: Any) -> Model:
    records.create(
        Model(
            metadata=ObjectMeta(name=name, namespace="acme"),
            spec=ModelSpec(source=spec.pop("source", factories.model().spec.source), **spec),
        )
    )

    def ready(m: Model) -> None:
        m.status.phase, m.status.digest = "Ready", DIGEST

    return records.mutate(Model, "acme", name, ready)


def an_evaluation(records: RecordStore, parallelism: int = 1) -> Evaluation:
    return records.create(
        Evaluation(
            metadata=ObjectMeta(name="e1", namespace="acme"),
            spec=EvaluationSpec(
                model=EntityRef(name="m1"),
                dataset=EntityRef(name="d1"),
                run=RunConfig(parallelism=parallelism),
            ),
        )
    )[0]


async def start(
    executor: KubernetesExecutor, key: tuple[str, str, str], workload: str, gen: int = 1
) -> None:
    await asyncio.to_thread(executor.start, key, workload, gen)  # type: ignore[arg-type]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


async def test_ingestion_job(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    model, _ = records.create(factories.model("m1"))
    cr = await kubectl_apply(cluster, model.wire())
    await start(executor, ("Model", "acme", "m1"), "ingest_model")

    job = cluster.read(JOBS, "acme", "dyff-model-m1-1")
    assert job is not None
    meta, spec = job["metadata"], job["spec"]
    assert meta["labels"] == {
        "app.kubernetes.io/managed-by": "dyff",
        "dyff.io/kind": "Model",
        "dyff.io/name": "m1",
        "dyff.io/generation": "1",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "dyff.io/v1alpha1",
            "kind": "Model",
            "name": "m1",
            "uid": cr["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 6 * 3600 and spec["ttlSecondsAfterFinished"] == 3600
    assert "completionMode" not in spec
    rule = spec["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2]

    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == meta["labels"]
    assert pod["serviceAccountName"] == "dyff-workload"
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "initContainers" not in pod
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    assert container["command"][-2:] == ["workload", "dyff.workloads.ingest_model"]
    env = env_of(container)
    assert env["DATASTORE_EMULATOR_HOST"] == "dyff-datastore:8081"
    config = WorkloadConfig.model_validate(json.loads(env["DYFF_WORKLOAD_CONFIG"]))
    assert (config.records_url, config.account, config.name) == (records.url, "acme", "m1")
    assert config.shard_index is None
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["runAsUser"] == 10001
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/work", "/tmp"}
    assert all("emptyDir" in v for v in pod["volumes"])
    assert container["resources"]["requests"] == {
        "cpu": "500m",
        "memory": "1Gi",
        "ephemeral-storage": "2Gi",
    }
    assert all(v["emptyDir"].get("sizeLimit") for v in pod["volumes"])

    # The account's workload ServiceAccount, from the template, before the Job.
    account = cluster.read("v1/serviceaccounts", "acme", "dyff-workload")
    assert account["automountServiceAccountToken"] is False
    assert account["metadata"]["labels"]["app.kubernetes.io/name"] == "dyff-workload"


async def test_evaluation_pod_serves_the_bento_in_a_native_sidecar(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    ready_model(records, resources=Resources(cpu="2", memory="4Gi", gpu=1))
    an_evaluation(records)
    await start(executor, ("Evaluation", "acme", "e1"), "evaluate")

    job = cluster.read(JOBS, "acme", "dyff-eval-e1-1")
    assert "ownerReferences" not in job["metadata"]  # no CR (yet): nothing to own it
    assert job["spec"]["activeDeadlineSeconds"] == 24 * 3600
    pod = job["spec"]["template"]["spec"]
    (server,) = pod["initContainers"]
    assert server["name"] == "model-server" and server["restartPolicy"] == "Always"
    assert server["image"] == IMAGE and server["command"][-1] == "serve-model"
    assert env_of(server)["DYFF_BENTO_KEY"] == layout.bento_key("acme", DIGEST)
    assert server["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 3000}
    assert server["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "1Gi", "nvidia.com/gpu": 1},
        "limits": {"memory": "4Gi", "nvidia.com/gpu": 1},
    }
    (client,) = pod["containers"]
    assert client["name"] == "evaluate"
    assert env_of(client)["DYFF_MODEL_URL"] == "http://127.0.0.1:3000"
    assert client["command"][-1] == "dyff.workloads.evaluate"


async def test_parallel_evaluation_of_an_image_model_is_an_indexed_job(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor, tmp_path: Path
) -> None:
    reference = f"registry.example/classifier@sha256:{DIGEST}"
    ready_model(
        records, source=ModelSource(form="image", image=ImageSource(reference=reference, port=8080))
    )
    an_evaluation(records, parallelism=4)
    await start(executor, ("Evaluation", "acme", "e1"), "evaluate")

    spec = cluster.read(JOBS, "acme", "dyff-eval-e1-1")["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    pod = spec["template"]["spec"]
    # A user's image is served from its own Pod (tests/controller/test_isolation.py),
    # one for all the Job's Pods, through its Service.
    assert "initContainers" not in pod
    server = cluster.read("v1/pods", "acme", "dyff-eval-e1-1-server")["spec"]["containers"][0]
    assert server["image"] == reference and "restartPolicy" not in server
    env = env_of(pod["containers"][0])
    assert env["DYFF_MODEL_URL"] == "http://dyff-eval-e1-1-server.acme.svc:8080"

    # In the Pod: the entry point gives the workload its shard of the Indexed Job.
    path = workload_config_file(
        {
            "DYFF_WORKLOAD_CONFIG": env["DYFF_WORKLOAD_CONFIG"],
            "JOB_COMPLETION_INDEX": "2",
            "TMPDIR": str(tmp_path),
        }
    )
    config = WorkloadConfig.model_validate(json.loads(path.read_text()))
    assert (config.shard_index, config.shard_count, config.name) == (2, 4, "e1")


def failed_pod(job: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-x1",
            "namespace": "acme",
            "labels": {"batch.kubernetes.io/job-name": job},
        },
        "spec": {},
    }


STATES = [
    ("no conditions: running", {"active": 1}, None, WorkState("running", 1)),
    (
        "complete",
        {"conditions": [{"type": "Complete", "status": "True"}]},
        None,
        WorkState("succeeded", 1),
    ),
    (
        "exit 2: the workload reported",
        {"conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]},
        None,
        WorkState("succeeded", 1),
    ),
    (
        "crashed",
        {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ]
        },
        "Traceback: KeyError: 'labels'",
        WorkState(
            "failed",
            1,
            # The container's traceback goes to the controller's log, not the status.
            "Job has reached the specified backoff limit; see the controller's log",
        ),
    ),
]


@pytest.mark.parametrize(
    ("case", "status", "pod_message", "expected"), STATES, ids=[s[0] for s in STATES]
)
async def test_state_follows_the_job_status(
    cluster: Cluster,
    records: RecordStore,
    executor: KubernetesExecutor,
    case: str,
    status: dict[str, Any],
    pod_message: str | None,
    expected: WorkState,
) -> None:
    records.create(factories.model("m1"))
    key = ("Model", "acme", "m1")
    assert await asyncio.to_thread(executor.state, key) == WorkState()
    await start(executor, key, "ingest_model")
    if pod_message is not None:
        pod = failed_pod("dyff-model-m1-1")
        async with cluster.servers[0].client.post("/api/v1/namespaces/acme/pods", json=pod) as r:
            assert r.status < 300
        terminated = {"exitCode": 1, "reason": "Error", "message": pod_message}
        statuses = [{"name": "ingest", "state": {"terminated": terminated}}]
        await cluster.set_status(
            "v1/pods", "acme", pod["metadata"]["name"],
            {"phase": "Failed", "containerStatuses": statuses},
        )  # fmt: skip
    await cluster.set_status(JOBS, "acme", "dyff-model-m1-1", status)
    assert await asyncio.to_thread(executor.state, key) == expected


async def test_a_new_generation_gets_its_own_job_and_stop_deletes_them_all(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    records.create(factories.model("m1"))
    records.create(factories.model("m1", account="globex"))
    await create_namespace(cluster, "globex")
    key = ("Model", "acme", "m1")
    await start(executor, key, "ingest_model", 1)
    await start(executor, key, "ingest_model", 1)  # again: the same Job, no error
    await start(executor, key, "ingest_model", 2)
    await start(executor, ("Model", "globex", "m1"), "ingest_model", 1)
    assert sorted(j["metadata"]["name"] for j in cluster.items(JOBS)) == [
        "dyff-model-m1-1",
        "dyff-model-m1-1",
        "dyff-model-m1-2",
    ]
    assert await asyncio.to_thread(executor.state, key) == WorkState("running", 2)
    assert await asyncio.to_thread(executor.work_keys) == [
        ("Model", "acme", "m1"),
        ("Model", "globex", "m1"),
    ]

    await asyncio.to_thread(executor.stop, key)
    assert [(j["metadata"]["namespace"]) for j in cluster.items(JOBS)] == ["globex"]
    deletes = [r for r in cluster if r.method == "DELETE"]
    assert len(deletes) == 2
    assert all(r.params["propagationPolicy"] == "Background" for r in deletes)
    assert await asyncio.to_thread(executor.state, key) == WorkState()


async def test_a_job_still_terminating_is_not_work_and_blocks_its_own_restart(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    records.create(factories.model("m1"))
    key = ("Model", "acme", "m1")
    await start(executor, key, "ingest_model", 1)
    # A finalizer (as the Job controller's) holds the Job while it is deleted.
    path = "/apis/batch/v1/namespaces/acme/jobs/dyff-model-m1-1"
    headers = {"Content-Type": "application/merge-patch+json"}
    async with cluster.servers[0].client.patch(
        path,
        json={"metadata": {"finalizers": ["batch.kubernetes.io/job-tracking"]}},
        headers=headers,
    ) as r:
        assert r.status == 200
    await asyncio.to_thread(executor.stop, key)
    assert cluster.read(JOBS, "acme", "dyff-model-m1-1")["metadata"]["deletionTimestamp"]
    assert await asyncio.to_thread(executor.state, key) == WorkState()
    with pytest.raises(RuntimeError, match="still terminating"):
        await start(executor, key, "ingest_model", 1)


async def test_existing_service_account_is_patched_once_per_account(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    async with cluster.servers[0].client.post(
        "/api/v1/namespaces/acme/serviceaccounts",
        json={
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "dyff-workload", "namespace": "acme"},
        },
    ) as r:
        assert r.status < 300
    records.create(factories.model("m1"))
    records.create(factories.dataset("d1"))
    await start(executor, ("Model", "acme", "m1"), "ingest_model")
    await start(executor, ("Dataset", "acme", "d1"), "ingest_dataset")
    account = cluster.read("v1/serviceaccounts", "acme", "dyff-workload")
    assert account["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dyff"
    touched = [r for r in cluster if "serviceaccounts" in str(r.url)]
    assert [r.method for r in touched] == ["POST", "GET", "PATCH"]  # ours: one GET, one PATCH


def test_job_names_stay_dns_labels_and_distinct() -> None:
    long_a, long_b = "a" * 60 + "xyz", "a" * 60 + "xyw"
    names = {job_name(("Evaluation", "acme", n), 12) for n in (long_a, long_b)}
    assert len(names) == 2
    assert all(len(n) <= MAX_JOB_NAME and n.endswith("-12") for n in names)
    assert job_name(("Dataset", "acme", "d1"), 3) == "dyff-data-d1-3"


def test_pod_entry_point_runs_the_workload_with_a_config_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dyff.workloads import pod

    ran: list[list[str]] = []
    monkeypatch.setattr(pod.os, "execv", lambda exe, argv: ran.append(argv))
    environ = {"DYFF_WORKLOAD_CONFIG": json.dumps({"name": "m1"}), "TMPDIR": str(tmp_path)}
    pod.main(["workload", "dyff.workloads.ingest_model"], environ)
    (argv,) = ran
    assert argv[1:4] == ["-m", "dyff.workloads.ingest_model", "--config"]
    assert json.loads(Path(argv[4]).read_text()) == {"name": "m1"}  # no shard: not indexed
    # Only dyff's workloads can be started this way.
    assert pod.main(["workload", "os"], environ) == 64
    assert len(ran) == 1


async def test_objects_without_jobs_cost_no_request_once_the_jobs_were_listed(
    cluster: Cluster, records: RecordStore, executor: KubernetesExecutor
) -> None:
    records.create(factories.model("m1"))
    await start(executor, ("Model", "acme", "m1"), "ingest_model")
    fresh = KubernetesExecutor(executor.api, records, executor.settings)  # a restart
    assert await asyncio.to_thread(fresh.state, ("Model", "acme", "m1")) == WorkState("running", 1)
    before = len(cluster)
    for i in range(5):  # e.g. evaluations waiting for their model
        assert await asyncio.to_thread(fresh.state, ("Evaluation", "acme", f"e{i}")) == WorkState()
    assert len(cluster) == before
