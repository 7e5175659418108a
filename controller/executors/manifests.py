"""Workload Jobs as data: small pure builders, one per object or part of one.

Ingestion runs one container of the runtime image. An evaluation runs one Pod per shard
range: the model server as a native sidecar (an init container with `restartPolicy:
Always`, so the Job completes when the client exits, and the client starts only once
the server's startup probe passes) beside the evaluation client, which reaches it on
loopback. `spec.run.parallelism > 1` makes it an Indexed Job whose Pods take the
shards of their `JOB_COMPLETION_INDEX`.

The Job carries everything the workload needs in its environment (the workload config
as JSON), so no ConfigMap is created; `dyff.workloads.pod` is the containers' entry
point. One builder makes the model server for both model forms: the runtime image
serving the model's Bento, or the user's own image — the same probes, resources,
sandbox and knobs either way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.executors import WorkKey
from controller.reconcilers.common import Workload
from dyff import layout
from dyff.models import validate_image_reference
from dyff.schema import API_VERSION, Entity, Evaluation, Model, Resources
from dyff.workloads import pod

LABEL_KIND = "dyff.io/kind"
LABEL_NAME = "dyff.io/name"
LABEL_GENERATION = "dyff.io/generation"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "dyff"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
SHORT = {"Model": "model", "Dataset": "data", "Evaluation": "eval"}
# Indexed Pods are named `<job>-<index>-<suffix>` and their hostname `<job>-<index>`,
# which must stay a DNS label (63): leave room for the index.
MAX_JOB_NAME = 52

# The runtime image (config/runtime/Dockerfile) runs as 10001 with HOME=/home/dyff,
# workdir /work, BENTOML_HOME=/work/bentoml; the root filesystem is read-only, so /work
# and /tmp are emptyDirs. Model servers of image-form models get the same sandbox.
RUNTIME_UID = 10001
POD_COMMAND = ["python", "-m", pod.MODULE]
WORKLOAD_CONTAINER = {"evaluate": "evaluate", "ingest_model": "ingest", "ingest_dataset": "ingest"}
MODEL_SERVER = "model-server"
# Exit code 2: the workload reported a user error in the record (run_main); retrying
# cannot help, so the Job fails at once and the reconciler reads the record.
REPORTED_EXIT_CODE = 2
DEFAULT_WORKLOAD_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"memory": "4Gi"},
}
DEFAULT_SERVER_RESOURCES = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"memory": "8Gi"},
}
GPU = "nvidia.com/gpu"
# Nothing in a model server reaches a model hub or phones home.
OFFLINE_ENV = {"BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
PASSTHROUGH_ENV = ("DATASTORE_EMULATOR_HOST", "DATASTORE_PROJECT_ID", "STORAGE_EMULATOR_HOST")


@dataclass
class JobSettings:
    """How workload Jobs are made; `from_env` reads the controller's environment."""

    image: str
    records_url: str
    blobs_url: str
    service_account: str = "dyff-workload"
    service_account_template: Path | None = None
    # Passed to every workload container (the emulator hosts of the kind overlay).
    env: dict[str, str] = field(default_factory=dict)
    backoff_limit: int = 2
    ingest_deadline_s: int = 6 * 3600
    evaluate_deadline_s: int = 24 * 3600
    ttl_after_finished_s: int = 3600
    model_port: int = 3000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> JobSettings:
        def need(name: str) -> str:
            value = environ.get(name)
            if not value:
                raise ValueError(f"{name} must be set for DYFF_EXECUTOR=kubernetes")
            return value

        template = environ.get("DYFF_WORKLOAD_SERVICE_ACCOUNT_TEMPLATE")
        return cls(
            image=need("DYFF_RUNTIME_IMAGE"),
            records_url=need("DYFF_RECORDS_URL"),
            blobs_url=need("DYFF_BLOBS_URL"),
            service_account=environ.get("DYFF_WORKLOAD_SERVICE_ACCOUNT", "dyff-workload"),
            service_account_template=Path(template) if template else None,
            env={k: environ[k] for k in PASSTHROUGH_ENV if environ.get(k)},
        )


# ---------------------------------------------------------------- names and labels


def job_name(key: WorkKey, generation: int) -> str:
    """`dyff-<kind>-<name>-<generation>`: the generation keeps a new spec's Job from
    colliding with the old one while that is still being deleted."""
    kind, _, name = key
    prefix, suffix = f"dyff-{SHORT[kind]}-", f"-{generation}"
    if len(prefix) + len(name) + len(suffix) <= MAX_JOB_NAME:
        return f"{prefix}{name}{suffix}"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    room = MAX_JOB_NAME - len(prefix) - len(suffix) - len(digest) - 1
    return f"{prefix}{name[:room].rstrip('-')}-{digest}{suffix}"


def work_labels(key: WorkKey, generation: int | None = None) -> dict[str, str]:
    kind, _, name = key
    labels = {MANAGED_BY: MANAGER, LABEL_KIND: kind, LABEL_NAME: name}
    if generation is not None:
        labels[LABEL_GENERATION] = str(generation)
    return labels


def get_owner_references(kind: str, name: str, uid: str) -> list[dict[str, Any]]:
    """The custom resource as the controlling owner: the Job (and its Pods) go with it."""
    return [
        {
            "apiVersion": API_VERSION,
            "kind": kind,
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def get_job_metadata(key: WorkKey, generation: int, owner_uid: str | None) -> dict[str, Any]:
    kind, account, name = key
    metadata: dict[str, Any] = {
        "name": job_name(key, generation),
        "namespace": account,
        "labels": work_labels(key, generation),
    }
    if owner_uid is not None:
        metadata["ownerReferences"] = get_owner_references(kind, name, owner_uid)
    return metadata


def get_service_account(
    template: Mapping[str, Any] | None, name: str, namespace: str
) -> dict[str, Any]:
    """The workloads' ServiceAccount in an account's namespace: the template (its
    annotations bind it to a cloud identity), named and placed here."""
    account = json.loads(json.dumps(template or {"apiVersion": "v1", "kind": "ServiceAccount"}))
    meta = account.setdefault("metadata", {})
    meta["name"], meta["namespace"] = name, namespace
    return account


# ---------------------------------------------------------------- container parts


def get_env(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def get_resources(spec: Resources | None, default: Mapping[str, Any]) -> dict[str, Any]:
    """Requests and limits: `default`, with what `spec` sets in its place — cpu as the
    request, memory as request and limit, GPUs as request and limit (extended resources
    need both equal)."""
    requests = dict(default.get("requests") or {})
    limits = dict(default.get("limits") or {})
    if spec is not None:
        if spec.cpu:
            requests["cpu"] = spec.cpu
        if spec.memory:
            requests["memory"] = limits["memory"] = spec.memory
        if spec.gpu:
            requests[GPU] = limits[GPU] = spec.gpu
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def get_container_security_context() -> dict[str, Any]:
    """The restricted Pod Security profile, and a read-only root filesystem."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def get_pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def get_work_volumes() -> list[dict[str, Any]]:
    return [{"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]


def get_work_mounts() -> list[dict[str, Any]]:
    return [{"name": "work", "mountPath": "/work"}, {"name": "tmp", "mountPath": "/tmp"}]


def get_http_probes(port: int) -> dict[str, Any]:
    """BentoML's health endpoints: ready on `/readyz`, alive while `/livez` answers."""
    return {
        # Loading a large model can take minutes; the client starts after this passes.
        "startupProbe": {
            "httpGet": {"path": "/readyz", "port": port},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 120,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": port},
            "periodSeconds": 5,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": port},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
    }


# ---------------------------------------------------------------- containers


def get_workload_config(settings: JobSettings, entity: Entity) -> dict[str, Any]:
    """The workload config (dyff.workloads.common.WorkloadConfig) of one object; an
    Indexed Job's Pods add their shard index (dyff.workloads.pod)."""
    config: dict[str, Any] = {
        "recordsUrl": settings.records_url,
        "blobsUrl": settings.blobs_url,
        "account": entity.account,
        "name": entity.name,
        "scratchDir": "/work/scratch",
    }
    if isinstance(entity, Evaluation) and entity.spec.run.parallelism > 1:
        config["shardCount"] = entity.spec.run.parallelism
    return config


def get_workload_env(settings: JobSettings, config: Mapping[str, Any]) -> dict[str, str]:
    """What every container of the runtime image gets: the passed-through variables and
    the workload config."""
    return {**settings.env, pod.WORKLOAD_CONFIG_ENV: json.dumps(config, sort_keys=True)}


def get_workload_container(
    workload: Workload, image: str, env: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "name": WORKLOAD_CONTAINER[workload],
        "image": image,
        "command": [*POD_COMMAND, "workload", f"dyff.workloads.{workload}"],
        "env": get_env(env),
        "resources": get_resources(None, DEFAULT_WORKLOAD_RESOURCES),
        "securityContext": get_container_security_context(),
        "volumeMounts": get_work_mounts(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def torch_threads(cpu: str | None) -> int | None:
    """Torch threads for a CPU request (a Kubernetes quantity: `2`, `1.5`, `500m`): the
    whole cores, at least one; None where there is no request (the service's default)."""
    if not cpu:
        return None
    try:
        cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    except ValueError:
        return None
    return max(1, math.floor(cores)) if math.isfinite(cores) else None


def get_model_server_knobs(evaluation: Evaluation, resources: Resources | None) -> dict[str, str]:
    """The DYFF_* knobs of dyff/runtime/service.py, as a locally served model gets them
    (dyff.workloads.evaluate.model_server): forward passes of the run's batch size, the
    evaluation's topK, and torch threads for the CPUs the server may use."""
    knobs = {
        "DYFF_TOP_K": str(evaluation.spec.inference.top_k),
        "DYFF_CHUNK_SIZE": str(evaluation.spec.run.batch_size),
    }
    threads = torch_threads(resources.cpu if resources else None)
    if threads is not None:
        knobs["DYFF_TORCH_THREADS"] = str(threads)
    if threads != 1:
        # Idle OpenMP threads sleep instead of spinning on the cores the client needs.
        knobs["OMP_WAIT_POLICY"] = "PASSIVE"
    return knobs


def get_model_server_container(
    *,
    image: str,
    port: int,
    resources: Resources | None,
    env: Mapping[str, str],
    command: list[str] | None = None,
) -> dict[str, Any]:
    """A model server as a native sidecar: BentoML's probes, the model's resources over
    the server defaults, the runtime sandbox, offline. `command` None runs the image's
    own entry point."""
    if not 1 <= port <= 65535:
        raise ValueError(f"bad port {port}")
    container: dict[str, Any] = {"name": MODEL_SERVER, "image": image}
    if command is not None:
        container["command"] = command
    container.update(
        {
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
            "env": get_env({**OFFLINE_ENV, **env, "BENTOML_PORT": str(port)}),
            "resources": get_resources(resources, DEFAULT_SERVER_RESOURCES),
            "securityContext": get_container_security_context(),
            "volumeMounts": get_work_mounts(),
            **get_http_probes(port),
            # Native sidecar: started before the client, stopped after it.
            "restartPolicy": "Always",
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    )
    return container


def model_port(settings: JobSettings, model: Model) -> int:
    """Where the model server listens: the image's port, or the runtime's."""
    source = model.spec.source.image
    return source.port if source is not None else settings.model_port


def get_model_server(
    settings: JobSettings,
    model: Model,
    evaluation: Evaluation,
    workload_env: Mapping[str, str],
) -> dict[str, Any]:
    """The evaluation's model server: the user's image (digest-pinned, given only the
    knobs), or the runtime image serving the model's packaged Bento from the blob store."""
    knobs = get_model_server_knobs(evaluation, model.spec.resources)
    port = model_port(settings, model)
    source = model.spec.source.image
    if source is not None:
        return get_model_server_container(
            image=str(validate_image_reference(source.reference)),
            port=port,
            resources=model.spec.resources,
            env=knobs,
        )
    if not model.status.digest:
        raise RuntimeError(f"model {model.name!r} has no packaged Bento")
    bento_key = layout.bento_key(model.account, model.status.digest)
    return get_model_server_container(
        image=settings.image,
        port=port,
        resources=model.spec.resources,
        env={**workload_env, pod.BENTO_KEY_ENV: bento_key, **knobs},
        command=[*POD_COMMAND, "serve-model"],
    )


# ---------------------------------------------------------------- Pod and Job


def get_pod_spec(
    settings: JobSettings,
    containers: list[dict[str, Any]],
    init_containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": settings.service_account,
        # The workloads never call the Kubernetes API.
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "securityContext": get_pod_security_context(),
    }
    if init_containers:
        spec["initContainers"] = init_containers
    spec["containers"] = containers
    spec["volumes"] = get_work_volumes()
    return spec


def get_pod_failure_policy(container: str) -> dict[str, Any]:
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": [REPORTED_EXIT_CODE],
                },
            },
            # Evicted or preempted Pods are not the workload's fault.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }


def get_job_spec(
    settings: JobSettings,
    workload: Workload,
    pod_spec: dict[str, Any],
    labels: Mapping[str, str],
    parallelism: int = 1,
) -> dict[str, Any]:
    """Retries, deadlines, clean-up and, for `parallelism > 1`, one Indexed Pod per
    shard range, all at once."""
    spec: dict[str, Any] = {
        "backoffLimit": settings.backoff_limit,
        "activeDeadlineSeconds": (
            settings.evaluate_deadline_s if workload == "evaluate" else settings.ingest_deadline_s
        ),
        "ttlSecondsAfterFinished": settings.ttl_after_finished_s,
        "podFailurePolicy": get_pod_failure_policy(WORKLOAD_CONTAINER[workload]),
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if parallelism > 1:
        spec.update(completionMode="Indexed", completions=parallelism, parallelism=parallelism)
    return spec


def get_job(
    settings: JobSettings,
    entity: Entity,
    workload: Workload,
    generation: int,
    *,
    owner_uid: str | None,
    model: Model | None = None,
) -> dict[str, Any]:
    """The Job for one workload of one object; an evaluation's needs its model."""
    key = (entity.kind, entity.account, entity.name)
    config = get_workload_config(settings, entity)
    env = get_workload_env(settings, config)
    init_containers = None
    parallelism = 1
    if workload == "evaluate":
        assert isinstance(entity, Evaluation) and model is not None, "evaluate needs its model"
        parallelism = entity.spec.run.parallelism
        init_containers = [get_model_server(settings, model, entity, env)]
        port = model_port(settings, model)
        client_env = {**env, pod.MODEL_URL_ENV: f"http://127.0.0.1:{port}"}
        containers = [get_workload_container(workload, settings.image, client_env)]
    else:
        containers = [get_workload_container(workload, settings.image, env)]
    pod_spec = get_pod_spec(settings, containers, init_containers)
    labels = work_labels(key, generation)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": get_job_metadata(key, generation, owner_uid),
        "spec": get_job_spec(settings, workload, pod_spec, labels, parallelism),
    }
