"""The workload Jobs' builders (controller/executors/manifests.py), one by one: the
fields Kubernetes acts on, exactly."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from controller.executors import manifests as m
from dyff import layout
from dyff.errors import WorkloadFailed
from dyff.schema import (
    EntityRef,
    Evaluation,
    EvaluationSpec,
    ImageSource,
    InferenceConfig,
    Model,
    ModelSource,
    ObjectMeta,
    Resources,
    RunConfig,
)
from dyff.workloads import pod
from dyff.workloads.common import WorkloadConfig
from tests import factories

IMAGE = "registry.example/dyff-runtime:1.0"
DIGEST = "cd" * 32
REFERENCE = f"registry.example/classifier@sha256:{DIGEST}"
SETTINGS = m.JobSettings(
    image=IMAGE,
    records_url="sqlite:///records.db",
    blobs_url="file:///blobs",
    env={"STORAGE_EMULATOR_HOST": "http://gcs:9023"},
)
GIVEN = Resources(cpu="2", memory="4Gi", gpu=1)
SANDBOX = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
PROBES = {
    "startupProbe": {
        "httpGet": {"path": "/readyz", "port": 3000},
        "periodSeconds": 5,
        "timeoutSeconds": 5,
        "failureThreshold": 120,
    },
    "readinessProbe": {
        "httpGet": {"path": "/readyz", "port": 3000},
        "periodSeconds": 5,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    },
    "livenessProbe": {
        "httpGet": {"path": "/livez", "port": 3000},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 6,
    },
}
MOUNTS = [{"name": "work", "mountPath": "/work"}, {"name": "tmp", "mountPath": "/tmp"}]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def ready_model(resources: Resources | None = None, image: ImageSource | None = None) -> Model:
    model = factories.model()
    if image is not None:
        model.spec.source = ModelSource(form="image", image=image)
    model.spec.resources = resources
    model.status.digest = DIGEST
    return model


def an_evaluation(parallelism: int = 1, batch_size: int = 64, top_k: int = 7) -> Evaluation:
    return Evaluation(
        metadata=ObjectMeta(name="e1", namespace="acme"),
        spec=EvaluationSpec(
            model=EntityRef(name="m1"),
            dataset=EntityRef(name="d1"),
            inference=InferenceConfig(top_k=top_k),
            run=RunConfig(parallelism=parallelism, batch_size=batch_size),
        ),
    )


# ---------------------------------------------------------------- names and labels


def test_labels_and_owner() -> None:
    key = ("Model", "acme", "m1")
    assert m.work_labels(key) == {
        "app.kubernetes.io/managed-by": "dyff",
        "dyff.io/kind": "Model",
        "dyff.io/name": "m1",
    }
    assert m.work_labels(key, 3)["dyff.io/generation"] == "3"
    assert m.get_owner_references("Model", "m1", "u-1") == [
        {
            "apiVersion": "dyff.io/v1alpha1",
            "kind": "Model",
            "name": "m1",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_job_metadata() -> None:
    key = ("Dataset", "acme", "d1")
    meta = m.get_job_metadata(key, 2, owner_uid="u-1")
    assert (meta["name"], meta["namespace"]) == ("dyff-data-d1-2", "acme")
    assert meta["labels"] == m.work_labels(key, 2)
    assert meta["ownerReferences"][0]["uid"] == "u-1"
    assert "ownerReferences" not in m.get_job_metadata(key, 2, owner_uid=None)


def test_service_account() -> None:
    template = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "x", "annotations": {"iam.gke.io/gcp-service-account": "w@p"}},
        "automountServiceAccountToken": False,
    }
    account = m.get_service_account(template, "dyff-workload", "acme")
    assert account["metadata"] == {
        "name": "dyff-workload",
        "namespace": "acme",
        "annotations": {"iam.gke.io/gcp-service-account": "w@p"},
    }
    assert account["automountServiceAccountToken"] is False
    assert template["metadata"]["name"] == "x"  # the template is left as it was
    assert m.get_service_account(None, "sa", "acme") == {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "sa", "namespace": "acme"},
    }


# ---------------------------------------------------------------- container parts


def test_resources_are_the_defaults_with_what_the_model_sets() -> None:
    assert m.get_resources(None, m.DEFAULT_SERVER_RESOURCES) == {
        "requests": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "1Gi"},
        "limits": {"memory": "8Gi"},
    }
    assert m.get_resources(GIVEN, m.DEFAULT_SERVER_RESOURCES) == {
        "requests": {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "1Gi", "nvidia.com/gpu": 1},
        "limits": {"memory": "4Gi", "nvidia.com/gpu": 1},
    }
    # A GPU alone keeps the default CPU and memory.
    assert m.get_resources(Resources(gpu=2), m.DEFAULT_SERVER_RESOURCES) == {
        "requests": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "1Gi", "nvidia.com/gpu": 2},
        "limits": {"memory": "8Gi", "nvidia.com/gpu": 2},
    }
    # The defaults themselves are never changed.
    m.get_resources(GIVEN, m.DEFAULT_SERVER_RESOURCES)["requests"]["cpu"] = "99"
    assert m.DEFAULT_SERVER_RESOURCES["requests"]["cpu"] == "1"


def test_security_contexts() -> None:
    assert m.get_container_security_context() == SANDBOX
    assert m.get_pod_security_context() == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_volumes_and_mounts() -> None:
    assert m.get_work_mounts() == MOUNTS
    assert m.get_work_volumes() == [
        {"name": "work", "emptyDir": {"sizeLimit": "50Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
    ]
    assert {v["name"] for v in m.get_work_volumes()} == {x["name"] for x in MOUNTS}


def test_probes() -> None:
    assert m.get_http_probes(3000) == PROBES


def test_env() -> None:
    assert m.get_env({"A": "1", "B": "2"}) == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "2"},
    ]


# ---------------------------------------------------------------- the workload container


def test_workload_config() -> None:
    config = m.get_workload_config(SETTINGS, factories.model())
    assert config == {
        "recordsUrl": "sqlite:///records.db",
        "blobsUrl": "file:///blobs",
        "account": "acme",
        "name": "m1",
        "scratchDir": "/work/scratch",
    }
    WorkloadConfig.model_validate(config)
    assert "shardCount" not in m.get_workload_config(SETTINGS, an_evaluation())
    assert m.get_workload_config(SETTINGS, an_evaluation(parallelism=4))["shardCount"] == 4


def test_workload_env_and_container() -> None:
    config = m.get_workload_config(SETTINGS, factories.model())
    env = m.get_workload_env(SETTINGS, config)
    assert env["STORAGE_EMULATOR_HOST"] == "http://gcs:9023"
    assert json.loads(env["DYFF_WORKLOAD_CONFIG"]) == config

    c = m.get_workload_container("ingest_model", IMAGE, env)
    assert c["name"] == "ingest" and c["image"] == IMAGE
    assert c["command"] == [
        "python", "-m", "dyff.workloads.pod", "workload", "dyff.workloads.ingest_model",
    ]  # fmt: skip
    assert env_of(c) == env
    assert c["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi"},
        "limits": {"memory": "4Gi"},
    }
    assert c["securityContext"] == SANDBOX
    assert c["volumeMounts"] == MOUNTS
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert m.get_workload_container("evaluate", IMAGE, env)["name"] == "evaluate"


def test_the_pod_entry_point_is_the_library_s() -> None:
    assert m.POD_COMMAND == ["python", "-m", pod.MODULE]
    assert pod.main([], {}) == 64


# ---------------------------------------------------------------- the model server


@pytest.mark.parametrize(
    ("cpu", "threads"),
    [
        (None, None),
        ("2", 2),
        ("1.5", 1),
        ("500m", 1),
        ("2500m", 2),
        ("1", 1),
        ("lots", None),
        ("0", 1),
        ("4e0", 4),
        ("1k", 256),
        (".5", 1),
    ],
)
def test_torch_threads_follow_the_cpu_request(cpu: str | None, threads: int | None) -> None:
    assert m.torch_threads(cpu) == threads


def test_model_server_knobs_are_the_local_run_s() -> None:
    evaluation = an_evaluation(batch_size=64, top_k=7)
    assert m.get_model_server_knobs(evaluation, Resources(cpu="4")) == {
        "DYFF_TOP_K": "7",
        "DYFF_CHUNK_SIZE": "64",
        "DYFF_TORCH_THREADS": "4",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    # No CPU request: the service's default threads (all it sees).
    assert m.get_model_server_knobs(evaluation, None) == {
        "DYFF_TOP_K": "7",
        "DYFF_CHUNK_SIZE": "64",
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    # One thread: nothing to keep from spinning.
    knobs = m.get_model_server_knobs(evaluation, Resources(cpu="1"))
    assert knobs["DYFF_TORCH_THREADS"] == "1" and "OMP_WAIT_POLICY" not in knobs


def test_model_server_container() -> None:
    c = m.get_model_server_container(
        image=IMAGE, port=3000, resources=GIVEN, env={"K": "v"}, command=["serve"]
    )
    assert (c["name"], c["image"], c["command"]) == ("model-server", IMAGE, ["serve"])
    assert c["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert env_of(c) == {
        "BENTOML_DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "K": "v",
        "BENTOML_PORT": "3000",
    }
    assert {k: c[k] for k in PROBES} == PROBES
    assert c["resources"] == m.get_resources(GIVEN, m.DEFAULT_SERVER_RESOURCES)
    assert c["securityContext"] == SANDBOX
    assert c["volumeMounts"] == MOUNTS
    assert c["restartPolicy"] == "Always"  # a native sidecar
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    no_command = m.get_model_server_container(image=IMAGE, port=8080, resources=None, env={})
    assert "command" not in no_command
    with pytest.raises(ValueError, match="bad port"):
        m.get_model_server_container(image=IMAGE, port=0, resources=None, env={})


def test_both_model_forms_get_the_same_server() -> None:
    evaluation = an_evaluation(batch_size=64, top_k=7)
    config = m.get_workload_config(SETTINGS, evaluation)
    env = m.get_workload_env(SETTINGS, config)
    bento = m.get_model_server(SETTINGS, ready_model(GIVEN), evaluation, env)
    image = m.get_model_server(
        SETTINGS, ready_model(GIVEN, ImageSource(reference=REFERENCE, port=3000)), evaluation, env
    )
    for key in (*PROBES, "resources", "securityContext", "volumeMounts", "ports"):
        assert bento[key] == image[key], key
    # dyff's Bento: a sidecar of the client; a user's image: a Pod of its own.
    assert bento["restartPolicy"] == "Always" and "restartPolicy" not in image
    knobs = {"DYFF_TOP_K": "7", "DYFF_CHUNK_SIZE": "64", "DYFF_TORCH_THREADS": "2"}
    offline = {"BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for server in (bento, image):
        assert env_of(server).items() >= {**knobs, **offline, "BENTOML_PORT": "3000"}.items()

    # The Bento: the runtime image fetches it from the blob store.
    assert bento["image"] == IMAGE
    assert bento["command"] == ["python", "-m", "dyff.workloads.pod", "serve-model"]
    assert env_of(bento)["DYFF_BENTO_KEY"] == layout.bento_key("acme", DIGEST)
    assert env_of(bento)["DYFF_WORKLOAD_CONFIG"] == env["DYFF_WORKLOAD_CONFIG"]
    # The image: its own entry point, and nothing of dyff's stores.
    assert image["image"] == REFERENCE and "command" not in image
    assert "DYFF_WORKLOAD_CONFIG" not in env_of(image)
    assert "STORAGE_EMULATOR_HOST" not in env_of(image)


def test_model_server_refusals() -> None:
    evaluation = an_evaluation()
    unpacked = ready_model()
    unpacked.status.digest = None
    with pytest.raises(RuntimeError, match="no packaged Bento"):
        m.get_model_server(SETTINGS, unpacked, evaluation, {})
    # Validation lets the schema's pattern through; the builder checks the reference again.
    odd = ready_model(image=ImageSource(reference=REFERENCE, port=3000))
    assert odd.spec.source.image is not None
    odd.spec.source.image.reference = "registry.example/classifier:latest"
    with pytest.raises(WorkloadFailed):
        m.get_model_server(SETTINGS, odd, evaluation, {})


def test_model_port() -> None:
    assert m.model_port(SETTINGS, ready_model()) == 3000
    image = ImageSource(reference=REFERENCE, port=8080)
    assert m.model_port(SETTINGS, ready_model(image=image)) == 8080


# ---------------------------------------------------------------- Pod and Job


def test_pod_spec_of_another_account_and_restart_policy() -> None:
    spec = m.get_pod_spec(
        SETTINGS, [{"name": "c"}], service_account="dyff-model-server", restart_policy="Always"
    )
    assert (spec["serviceAccountName"], spec["restartPolicy"]) == ("dyff-model-server", "Always")
    assert spec["automountServiceAccountToken"] is False


def test_pod_spec() -> None:
    spec = m.get_pod_spec(SETTINGS, [{"name": "c"}], [{"name": "s"}])
    assert spec == {
        "serviceAccountName": "dyff-workload",
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "securityContext": m.get_pod_security_context(),
        "initContainers": [{"name": "s"}],
        "containers": [{"name": "c"}],
        "volumes": m.get_work_volumes(),
    }
    assert "initContainers" not in m.get_pod_spec(SETTINGS, [{"name": "c"}])


def test_pod_failure_policy() -> None:
    assert m.get_pod_failure_policy("ingest") == {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "ingest", "operator": "In", "values": [2]},
            },
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def test_job_spec_deadlines_and_indexed_mode() -> None:
    labels = {"a": "b"}
    ingest = m.get_job_spec(SETTINGS, "ingest_dataset", {"p": 1}, labels)
    assert ingest["backoffLimit"] == 2
    assert ingest["activeDeadlineSeconds"] == 6 * 3600
    assert ingest["ttlSecondsAfterFinished"] == 3600
    assert ingest["podFailurePolicy"] == m.get_pod_failure_policy("ingest")
    assert ingest["template"] == {"metadata": {"labels": labels}, "spec": {"p": 1}}
    assert not {"completionMode", "completions", "parallelism"} & ingest.keys()

    evaluate = m.get_job_spec(SETTINGS, "evaluate", {}, labels, parallelism=4)
    assert evaluate["activeDeadlineSeconds"] == 24 * 3600
    assert evaluate["podFailurePolicy"] == m.get_pod_failure_policy("evaluate")
    assert (evaluate["completionMode"], evaluate["completions"], evaluate["parallelism"]) == (
        "Indexed",
        4,
        4,
    )
    # Each shard range retries on its own; one that runs out of retries fails the Job.
    assert (evaluate["backoffLimitPerIndex"], evaluate["maxFailedIndexes"]) == (2, 0)
    assert "backoffLimit" not in evaluate


def test_evaluation_job() -> None:
    evaluation = an_evaluation(parallelism=3)
    model = ready_model()
    job = m.get_job(SETTINGS, evaluation, "evaluate", 5, owner_uid="u-1", model=model)
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"] == m.get_job_metadata(("Evaluation", "acme", "e1"), 5, "u-1")
    spec = job["spec"]
    assert spec["completions"] == 3
    assert spec["template"]["metadata"]["labels"] == job["metadata"]["labels"]
    pod_spec = spec["template"]["spec"]
    (server,) = pod_spec["initContainers"]
    assert (server["name"], server["image"]) == ("model-server", IMAGE)
    assert server["ports"][0]["containerPort"] == 3000
    (client,) = pod_spec["containers"]
    env = env_of(client)
    assert env["DYFF_MODEL_URL"] == "http://127.0.0.1:3000"
    assert json.loads(env["DYFF_WORKLOAD_CONFIG"])["shardCount"] == 3
    assert "suspend" not in spec and "annotations" not in job["metadata"]
    with pytest.raises(AssertionError):
        m.get_job(SETTINGS, evaluation, "evaluate", 5, owner_uid=None)


def test_ingestion_job() -> None:
    job = m.get_job(SETTINGS, factories.dataset(), "ingest_dataset", 1, owner_uid=None)
    pod_spec = job["spec"]["template"]["spec"]
    assert "initContainers" not in pod_spec
    (container,) = pod_spec["containers"]
    assert container["command"][-1] == "dyff.workloads.ingest_dataset"
    assert "DYFF_MODEL_URL" not in env_of(container)


def test_settings_from_the_controller_environment() -> None:
    env = {
        "DYFF_RUNTIME_IMAGE": IMAGE,
        "DYFF_RECORDS_URL": "sqlite:///r.db",
        "DYFF_BLOBS_URL": "file:///b",
        "DATASTORE_EMULATOR_HOST": "ds:8081",
        "UNRELATED": "x",
    }
    settings = m.JobSettings.from_env(env)
    assert (settings.image, settings.env) == (IMAGE, {"DATASTORE_EMULATOR_HOST": "ds:8081"})
    assert (settings.image_repository, settings.model_start_timeout_s) == (None, 600.0)
    tuned = m.JobSettings.from_env(
        {**env, "DYFF_IMAGE_REPOSITORY": "r.example/p/models/", "DYFF_MODEL_START_TIMEOUT_S": "90"}
    )
    assert (tuned.image_repository, tuned.model_start_timeout_s) == ("r.example/p/models", 90.0)
    with pytest.raises(ValueError, match="DYFF_RUNTIME_IMAGE"):
        m.JobSettings.from_env({k: v for k, v in env.items() if k != "DYFF_RUNTIME_IMAGE"})


# ---------------------------------------------------------------- users' code, isolated

KEY = ("Evaluation", "acme", "e1")
BUILDING = SETTINGS.__class__(**{**SETTINGS.__dict__, "image_repository": "r.example/models"})


def user_bento() -> Model:
    model = ready_model()
    model.status.user_code = True
    return model


def test_isolation_names_and_labels() -> None:
    assert m.server_name("dyff-eval-e1-3") == "dyff-eval-e1-3-server"
    assert len(m.server_name("x" * m.MAX_JOB_NAME)) <= 63
    assert m.role_labels(KEY, 3, m.ROLE_SERVER) == {
        **m.work_labels(KEY, 3),
        "dyff.io/role": "model-server",
    }
    assert m.model_url("s", "acme", 8080) == "http://s.acme.svc:8080"
    assert m.build_job_name(DIGEST) == f"dyff-build-{DIGEST[:40]}"
    assert m.build_image_name("r.example/models/", "acme") == "r.example/models/acme"


def test_which_models_run_isolated() -> None:
    assert not m.is_isolated(ready_model())  # dyff's own packaging
    assert m.is_isolated(user_bento())
    assert m.is_isolated(ready_model(image=ImageSource(reference=REFERENCE, port=8080)))


def test_isolated_evaluation_job_holds_the_client_only() -> None:
    image = ready_model(image=ImageSource(reference=REFERENCE, port=8080))
    job = m.get_job(
        SETTINGS, an_evaluation(parallelism=2), "evaluate", 1, owner_uid="u", model=image
    )
    template = job["spec"]["template"]
    assert "initContainers" not in template["spec"]
    assert template["spec"]["serviceAccountName"] == "dyff-workload"
    assert template["metadata"]["labels"] == m.role_labels(KEY, 1, m.ROLE_CLIENT)
    (client,) = template["spec"]["containers"]
    assert env_of(client)["DYFF_MODEL_URL"] == "http://dyff-eval-e1-1-server.acme.svc:8080"
    assert job["metadata"]["annotations"] == {"dyff.io/model-image": REFERENCE}
    assert job["spec"]["suspend"] is False


def test_isolated_evaluation_job_waits_for_its_build() -> None:
    evaluation, model = an_evaluation(), user_bento()
    waiting = m.get_job(
        SETTINGS, evaluation, "evaluate", 1, owner_uid=None, model=model, image_build="acme/b"
    )
    assert waiting["spec"]["suspend"] is True
    assert waiting["metadata"]["annotations"] == {"dyff.io/image-build": "acme/b"}
    built = m.get_job(
        SETTINGS, evaluation, "evaluate", 1, owner_uid=None, model=model, built_image=REFERENCE
    )
    assert built["spec"]["suspend"] is False
    with pytest.raises(ValueError, match="built image"):
        m.get_job(SETTINGS, evaluation, "evaluate", 1, owner_uid=None, model=model)


def test_a_users_bento_is_never_served_by_the_runtime_image() -> None:
    evaluation = an_evaluation()
    with pytest.raises(RuntimeError, match="built image"):
        m.get_model_server(SETTINGS, user_bento(), evaluation, {})
    server = m.get_model_server(SETTINGS, user_bento(), evaluation, {}, image=REFERENCE)
    assert server["image"] == REFERENCE and "command" not in server
    assert server["ports"][0]["containerPort"] == 3000


def test_model_server_pod() -> None:
    container = m.get_model_server_container(
        image=REFERENCE, port=8080, resources=None, env={}, sidecar=False
    )
    pod_doc = m.get_model_server_pod(SETTINGS, KEY, 2, "dyff-eval-e1-2", "uid-j", container)
    meta, spec = pod_doc["metadata"], pod_doc["spec"]
    assert (meta["name"], meta["namespace"]) == ("dyff-eval-e1-2-server", "acme")
    assert meta["labels"] == m.role_labels(KEY, 2, m.ROLE_SERVER)
    owner = m.get_owner_references("Job", "dyff-eval-e1-2", "uid-j", "batch/v1")
    assert meta["ownerReferences"] == owner and owner[0]["kind"] == "Job"
    assert spec["serviceAccountName"] == "dyff-model-server"
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Always"
    assert spec["containers"] == [container] and container["securityContext"] == SANDBOX
    assert spec["volumes"] == m.get_work_volumes()


def test_model_service() -> None:
    service = m.get_model_service(KEY, 2, "dyff-eval-e1-2", "uid-j", 8080)
    assert service["metadata"]["name"] == "dyff-eval-e1-2-server"
    assert service["spec"]["selector"] == m.role_labels(KEY, 2, m.ROLE_SERVER)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]


def test_model_network_policy() -> None:
    policy = m.get_model_network_policy(KEY, 2, "dyff-eval-e1-2", "uid-j", 8080)
    assert policy["spec"] == {
        "podSelector": {"matchLabels": m.role_labels(KEY, 2, m.ROLE_SERVER)},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": m.role_labels(KEY, 2, m.ROLE_CLIENT)}}],
                "ports": [{"protocol": "TCP", "port": 8080}],
            }
        ],
        "egress": [],
    }


def test_model_server_service_account() -> None:
    account = m.get_model_server_service_account("dyff-model-server", "acme")
    assert account["automountServiceAccountToken"] is False
    assert "annotations" not in account["metadata"]
    assert account["metadata"]["namespace"] == "acme"


def test_build_job() -> None:
    job = m.get_build_job(BUILDING, user_bento(), "https://signed.example/b", "u-m")
    meta = job["metadata"]
    assert (meta["name"], meta["namespace"]) == (m.build_job_name(DIGEST), "acme")
    assert meta["annotations"] == {"dyff.io/image-name": "r.example/models/acme"}
    assert meta["ownerReferences"] == m.get_owner_references("Model", "m1", "u-m")
    spec = job["spec"]
    assert "ttlSecondsAfterFinished" not in spec, "the finished build is the cache"
    assert spec["activeDeadlineSeconds"] == 3600 and spec["backoffLimit"] == 1
    pod_spec = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == meta["labels"] == m.build_labels(DIGEST)
    # Not the storage ServiceAccount: the builder's, which may only push images.
    assert pod_spec["serviceAccountName"] == "dyff-image-builder"
    assert pod_spec["automountServiceAccountToken"] is False
    (fetch,) = pod_spec["initContainers"]
    assert fetch["image"] == IMAGE and fetch["securityContext"] == SANDBOX
    assert env_of(fetch)["DYFF_BENTO_URL"] == "https://signed.example/b"
    assert "DYFF_WORKLOAD_CONFIG" not in env_of(fetch)
    (build,) = pod_spec["containers"]
    assert build["image"] == BUILDING.builder_image
    assert build["args"][:4] == [
        "--context=dir:///workspace/bento",
        "--dockerfile=/workspace/bento/env/docker/Dockerfile",
        f"--destination=r.example/models/acme:{DIGEST}",
        "--digest-file=/dev/termination-log",
    ]
    assert build["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert build["securityContext"]["allowPrivilegeEscalation"] is False
    with pytest.raises(ValueError, match="DYFF_IMAGE_REPOSITORY"):
        m.get_build_job(SETTINGS, user_bento(), "https://signed.example/b", None)


def test_build_network_policy() -> None:
    policy = m.get_build_network_policy(user_bento(), None)
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": m.build_labels(DIGEST)}
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
    dns, internet, *metadata_server = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    (block,) = internet["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "169.254.0.0/16"} <= set(block["ipBlock"]["except"])
    assert internet["ports"] == [{"protocol": "TCP", "port": 443}]
    assert [r["to"][0]["ipBlock"]["cidr"] for r in metadata_server] == [
        "169.254.169.254/32",
        "169.254.169.252/32",
    ]


def bento_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("unsafe", [False, True])
def test_the_fetch_script_unpacks_with_checked_extraction(tmp_path: Path, unsafe: bool) -> None:
    members = {"bento.yaml": b"service: x\n", "env/docker/Dockerfile": b"FROM scratch\n"}
    if unsafe:
        members["../escape"] = b"x"
    archive = bento_archive(tmp_path / "user.bento", members)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    script = m.FETCH_BENTO_SCRIPT.replace(m.BUILD_WORKSPACE, str(workspace))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={"DYFF_BENTO_URL": archive.as_uri(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    context = workspace / "bento"
    if unsafe:
        assert proc.returncode != 0 and not context.exists()
        assert not (tmp_path / "escape").exists()
    else:
        assert proc.returncode == 0, proc.stderr
        assert (context / "env/docker/Dockerfile").read_bytes() == b"FROM scratch\n"
        assert not (workspace / "model.bento").exists()


def test_the_jobs_are_valid_kubernetes_jobs() -> None:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    from tests.config import manifests as schemas

    version = schemas.latest_kubernetes()
    evaluation = an_evaluation(parallelism=4)
    image = ImageSource(reference=REFERENCE, port=8080)
    jobs = [
        m.get_job(SETTINGS, factories.model(), "ingest_model", 1, owner_uid="u-1"),
        m.get_job(SETTINGS, evaluation, "evaluate", 1, owner_uid=None, model=ready_model(GIVEN)),
        m.get_job(
            SETTINGS, evaluation, "evaluate", 2, owner_uid="u", model=ready_model(None, image)
        ),
    ]
    image_model = ready_model(None, image)
    container = m.get_model_server(SETTINGS, image_model, evaluation, {})
    key = ("Evaluation", "acme", "e1")
    jobs += [
        m.get_job(SETTINGS, evaluation, "evaluate", 3, owner_uid="u", model=image_model),
        m.get_job(
            SETTINGS,
            evaluation,
            "evaluate",
            3,
            owner_uid="u",
            model=user_bento(),
            image_build="a/b",
        ),
        m.get_model_server_pod(SETTINGS, key, 3, "dyff-eval-e1-3", "u-j", container),
        m.get_model_service(key, 3, "dyff-eval-e1-3", "u-j", 8080),
        m.get_model_network_policy(key, 3, "dyff-eval-e1-3", "u-j", 8080),
        m.get_model_server_service_account("dyff-model-server", "acme"),
        m.get_build_job(BUILDING, user_bento(), "https://signed.example/b", "u-m"),
        m.get_build_network_policy(user_bento(), "u-m"),
    ]
    assert [p for job in jobs for p in schemas.schema_problems(job, version)] == []
