"""Workload Jobs as data: small pure builders, one per object or part of one.

Ingestion runs one container of the runtime image. An evaluation runs one Pod per shard
range (`spec.run.parallelism > 1` makes it an Indexed Job whose Pods take the shards of
their `JOB_COMPLETION_INDEX`) with dyff's evaluation client, and a model server:

- dyff's own packaging of a model (transformers form, user_code false): the server is a
  native sidecar (an init container with `restartPolicy: Always`, so the Job completes
  when the client exits, and the client starts only once the server's startup probe
  passes) beside the client, which reaches it on loopback;
- a user's own code (an image, or a Bento with its own service, built into an image by
  `get_build_job`): the server runs isolated in a Pod of its own (`get_model_server_pod`)
  with a ServiceAccount that has no cloud identity and no token, behind a Service, and a
  NetworkPolicy that admits only its evaluation's client Pods and lets nothing out. The
  client keeps the storage ServiceAccount and reaches the server through the Service.
  docs/kubernetes-isolation.md says who holds which credentials.

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
from dyff.schema import API_VERSION, Entity, Evaluation, Model, Resources, quantity_value
from dyff.workloads import pod

LABEL_KIND = "dyff.io/kind"
LABEL_NAME = "dyff.io/name"
LABEL_GENERATION = "dyff.io/generation"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "dyff"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
# Which part of an isolated evaluation a Pod is: the NetworkPolicy and the Service
# select by it.
LABEL_ROLE = "dyff.io/role"
ROLE_CLIENT = "evaluation-client"
ROLE_SERVER = "model-server"
ROLE_BUILDER = "image-builder"
# Builds are named by the model digest they build (a label value holds 63 characters).
LABEL_BUILD = "dyff.io/build"
# On an isolated evaluation's Job: the pinned image its server runs, or, until that is
# known, the builder Job (`namespace/name`) that makes it.
ANNOTATION_MODEL_IMAGE = "dyff.io/model-image"
ANNOTATION_IMAGE_BUILD = "dyff.io/image-build"
# On a builder Job: where it pushes, and (once read from its Pod) the digest it pushed.
ANNOTATION_IMAGE_NAME = "dyff.io/image-name"
ANNOTATION_IMAGE_DIGEST = "dyff.io/image-digest"
WORKLOAD_IDENTITY_ANNOTATION = "iam.gke.io/gcp-service-account"
SHORT = {"Model": "model", "Dataset": "data", "Evaluation": "eval"}
# Indexed Pods are named `<job>-<index>-<suffix>` and their hostname `<job>-<index>`,
# which must stay a DNS label (63): leave room for the index.
MAX_JOB_NAME = 52

# The runtime image (config/runtime/Dockerfile) runs as 10001 with HOME=/home/dyff,
# workdir /work, BENTOML_HOME=/work/bentoml; the root filesystem is read-only, so /work
# and /tmp are emptyDirs. Users' model servers get the same sandbox, in Pods of their own.
RUNTIME_UID = 10001
POD_COMMAND = ["python", "-m", pod.MODULE]
WORKLOAD_CONTAINER = {"evaluate": "evaluate", "ingest_model": "ingest", "ingest_dataset": "ingest"}
MODEL_SERVER = "model-server"
BUILDER = "build"
FETCHER = "fetch-bento"
# Where the builder Pod keeps the Bento: the archive, then the unpacked build context.
BUILD_WORKSPACE = "/workspace"
BUILD_CONTEXT = f"{BUILD_WORKSPACE}/bento"
# What the builder's init container runs (dyff's runtime image, no credentials): fetch
# the Bento from a short-lived signed URL and unpack it with dyff's checked extraction.
FETCH_BENTO_SCRIPT = f"""\
import os, pathlib, shutil, urllib.request
from dyff.models import extract_archive
archive = pathlib.Path("{BUILD_WORKSPACE}/model.bento")
with urllib.request.urlopen(os.environ["DYFF_BENTO_URL"], timeout=60) as r, archive.open("wb") as f:
    shutil.copyfileobj(r, f)
extract_archive(archive, pathlib.Path("{BUILD_CONTEXT}"))
archive.unlink()
"""
BENTO_URL_ENV = "DYFF_BENTO_URL"
# kaniko must be root in its container to assemble the image's filesystem; these are the
# capabilities it needs for that (chown, set ids), nothing more.
BUILDER_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]
DEFAULT_BUILDER_RESOURCES = {
    "requests": {"cpu": "1", "memory": "2Gi"},
    "limits": {"memory": "8Gi"},
}
# Exit code 2: the workload reported a user error in the record (run_main); retrying
# cannot help, so the Job fails at once and the reconciler reads the record.
REPORTED_EXIT_CODE = 2
DEFAULT_WORKLOAD_RESOURCES = {
    "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi"},
    "limits": {"memory": "4Gi"},
}
DEFAULT_SERVER_RESOURCES = {
    "requests": {"cpu": "1", "memory": "2Gi", "ephemeral-storage": "1Gi"},
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
    # Users' model servers: a ServiceAccount with no cloud identity (never bind it).
    model_server_service_account: str = "dyff-model-server"
    # A model server not ready this long after its Pod started fails the evaluation.
    model_start_timeout_s: float = 600.0
    # Users' Bentos are built into images pushed here (`REGISTRY/PATH`, one image per
    # account under it); None: such models fail, naming DYFF_IMAGE_REPOSITORY.
    image_repository: str | None = None
    builder_image: str = "gcr.io/kaniko-project/executor:v1.23.2"
    builder_service_account: str = "dyff-image-builder"
    builder_service_account_template: Path | None = None
    build_deadline_s: int = 3600
    # Warm model servers (`get_warm_deployment`): scaled to zero once unused this long;
    # 0 (the default) serves each evaluation with a server of its own.
    warm_idle_s: float = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> JobSettings:
        def need(name: str) -> str:
            value = environ.get(name)
            if not value:
                raise ValueError(f"{name} must be set for DYFF_EXECUTOR=kubernetes")
            return value

        def path(name: str) -> Path | None:
            value = environ.get(name)
            return Path(value) if value else None

        return cls(
            image=need("DYFF_RUNTIME_IMAGE"),
            records_url=need("DYFF_RECORDS_URL"),
            blobs_url=need("DYFF_BLOBS_URL"),
            service_account=environ.get("DYFF_WORKLOAD_SERVICE_ACCOUNT", "dyff-workload"),
            service_account_template=path("DYFF_WORKLOAD_SERVICE_ACCOUNT_TEMPLATE"),
            env={k: environ[k] for k in PASSTHROUGH_ENV if environ.get(k)},
            model_start_timeout_s=float(
                environ.get("DYFF_MODEL_START_TIMEOUT_S") or cls.model_start_timeout_s
            ),
            image_repository=environ.get("DYFF_IMAGE_REPOSITORY", "").rstrip("/") or None,
            builder_image=environ.get("DYFF_BUILDER_IMAGE") or cls.builder_image,
            builder_service_account_template=path("DYFF_BUILDER_SERVICE_ACCOUNT_TEMPLATE"),
            warm_idle_s=float(environ.get("DYFF_WARM_IDLE_S") or 0),
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


def get_owner_references(
    kind: str, name: str, uid: str, api_version: str = API_VERSION
) -> list[dict[str, Any]]:
    """The controlling owner (a custom resource, or an evaluation's Job): what is owned
    goes with it (the Job and its Pods; a model server's Pod, Service, NetworkPolicy)."""
    return [
        {
            "apiVersion": api_version,
            "kind": kind,
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def server_name(job: str) -> str:
    """The isolated model server's Pod, Service and NetworkPolicy: its Job's name and
    `-server` (52 + 7 characters: a DNS label, and a Service name)."""
    return f"{job}-server"


def role_labels(key: WorkKey, generation: int, role: str) -> dict[str, str]:
    """One part of one evaluation (its clients, its server): what selectors pick."""
    return {**work_labels(key, generation), LABEL_ROLE: role}


def build_job_name(model_digest: str) -> str:
    """One build per Bento: named by its digest, so a second evaluation finds the first's."""
    return f"dyff-build-{model_digest[:40]}"


def build_image_name(repository: str, account: str) -> str:
    """Where an account's built Bentos go: one image per account under the repository
    (a registry can grant per path), tagged by model digest, served by image digest."""
    return f"{repository.rstrip('/')}/{account}"


def model_url(service: str, namespace: str, port: int) -> str:
    return f"http://{service}.{namespace}.svc:{port}"


def is_isolated(model: Model) -> bool:
    """A user's own code (an image, or a Bento with its own service) runs isolated."""
    return model.spec.source.form == "image" or model.status.user_code


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


def get_model_server_service_account(name: str, namespace: str) -> dict[str, Any]:
    """Users' model servers' ServiceAccount: no cloud identity (no Workload Identity
    annotation; never grant its KSA anything), no token, no API permissions."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "dyff"},
        },
        "automountServiceAccountToken": False,
    }


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
        # Numeric, so the kubelet can check runAsNonRoot whatever the image's USER says.
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


# Scratch on the node's disk, bounded: a workload that fills it is evicted, not the node.
WORK_SIZE_LIMIT = "50Gi"  # a model, a dataset's shards, a Bento
TMP_SIZE_LIMIT = "2Gi"


def get_work_volumes() -> list[dict[str, Any]]:
    return [
        {"name": "work", "emptyDir": {"sizeLimit": WORK_SIZE_LIMIT}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
    ]


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


MAX_TORCH_THREADS = 256  # no node has more cores than that to give one Pod


def torch_threads(cpu: str | None) -> int | None:
    """Torch threads for a CPU request (a Kubernetes quantity: `2`, `1.5`, `500m`, `2k`):
    the whole cores, at least one; None where there is no request (the service's
    default)."""
    if not cpu:
        return None
    try:
        cores = quantity_value(cpu)
    except ValueError:
        return None
    return max(1, min(math.floor(cores), MAX_TORCH_THREADS)) if math.isfinite(cores) else None


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
    sidecar: bool = True,
) -> dict[str, Any]:
    """A model server: BentoML's probes, the model's resources over the server defaults,
    the runtime sandbox, offline. `command` None runs the image's own entry point.
    `sidecar`: a native sidecar of the client's Pod; else the container of its own Pod."""
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
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
    )
    if sidecar:
        # Native sidecar: started before the client, stopped after it.
        container["restartPolicy"] = "Always"
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
    image: str | None = None,
) -> dict[str, Any]:
    """The evaluation's model server: a user's image (the model's own, or `image`, the
    one built from the user's Bento; digest-pinned, given only the knobs, in a Pod of its
    own), or the runtime image serving dyff's packaged Bento from the blob store (a
    sidecar)."""
    knobs = get_model_server_knobs(evaluation, model.spec.resources)
    port = model_port(settings, model)
    source = model.spec.source.image
    reference = image or (source.reference if source is not None else None)
    if reference is not None:
        return get_model_server_container(
            image=str(validate_image_reference(reference)),
            port=port,
            resources=model.spec.resources,
            env=knobs,
            sidecar=False,
        )
    if is_isolated(model):
        raise RuntimeError(f"model {model.name!r} runs its own code: it needs its built image")
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
    *,
    service_account: str | None = None,
    restart_policy: str = "Never",
) -> dict[str, Any]:
    """Every dyff Pod: no API token, no service links, the restricted profile, emptyDir
    /work and /tmp; the workload ServiceAccount unless `service_account` says another."""
    spec: dict[str, Any] = {
        "serviceAccountName": service_account or settings.service_account,
        # No Pod of dyff's calls the Kubernetes API.
        "automountServiceAccountToken": False,
        "restartPolicy": restart_policy,
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
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
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
        # Each shard range its own retries; one that runs out of them fails the Job.
        del spec["backoffLimit"]
        spec.update(backoffLimitPerIndex=settings.backoff_limit, maxFailedIndexes=0)
    return spec


def get_isolation_annotations(
    model: Model, built_image: str | None, image_build: str | None
) -> dict[str, str]:
    """What an isolated evaluation's Job says about its server's image: the pinned
    image (the model's own, or the one built from its Bento), or the build making it."""
    source = model.spec.source.image
    image = built_image or (source.reference if source is not None else None)
    if image is not None:
        return {ANNOTATION_MODEL_IMAGE: str(validate_image_reference(image))}
    if not image_build:
        raise ValueError(f"model {model.name!r} needs a built image or the build that makes it")
    return {ANNOTATION_IMAGE_BUILD: image_build}


def get_job(
    settings: JobSettings,
    entity: Entity,
    workload: Workload,
    generation: int,
    *,
    owner_uid: str | None,
    model: Model | None = None,
    built_image: str | None = None,
    image_build: str | None = None,
    warm: str | None = None,
) -> dict[str, Any]:
    """The Job for one workload of one object; an evaluation's needs its model. An
    isolated model's evaluation Job holds the client only, and waits suspended while
    its server's image is still being built (`image_build`, `namespace/name`). `warm`:
    the warm server (`warm_server_name`) its clients use instead of a server of their
    own."""
    key = (entity.kind, entity.account, entity.name)
    config = get_workload_config(settings, entity)
    env = get_workload_env(settings, config)
    init_containers = None
    parallelism = 1
    labels = work_labels(key, generation)
    annotations: dict[str, str] = {}
    if workload == "evaluate":
        assert isinstance(entity, Evaluation) and model is not None, "evaluate needs its model"
        parallelism = entity.spec.run.parallelism
        port = model_port(settings, model)
        if warm is not None:
            # A warm server of its own Deployment (`get_warm_deployment`), found by name.
            url = model_url(warm, entity.account, port)
            labels = {**labels, LABEL_USES_WARM: warm}
            if is_isolated(model):
                annotations = get_isolation_annotations(model, built_image, image_build)
        elif is_isolated(model):
            service = server_name(job_name(key, generation))
            url = model_url(service, entity.account, port)
            labels = role_labels(key, generation, ROLE_CLIENT)
            annotations = get_isolation_annotations(model, built_image, image_build)
        else:
            init_containers = [get_model_server(settings, model, entity, env)]
            url = f"http://127.0.0.1:{port}"
        containers = [
            get_workload_container(workload, settings.image, {**env, pod.MODEL_URL_ENV: url})
        ]
    else:
        containers = [get_workload_container(workload, settings.image, env)]
    pod_spec = get_pod_spec(settings, containers, init_containers)
    metadata = get_job_metadata(key, generation, owner_uid)
    spec = get_job_spec(settings, workload, pod_spec, labels, parallelism)
    if annotations:
        metadata["annotations"] = annotations
        # Suspended until the executor has the image and starts the server.
        spec["suspend"] = ANNOTATION_MODEL_IMAGE not in annotations
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


# ---------------------------------------------------------------- the isolated server
#
# One server per evaluation, shared by all Pods of an Indexed Job: the model is loaded
# once and sized by the model's `resources` (a GPU each for N servers would multiply
# what an evaluation asks of the cluster), and BentoML batches the clients' requests.
# Its Pod, Service and NetworkPolicy are owned by the evaluation's Job: deleting the Job
# deletes them (the executor deletes them too, and as soon as the Job finishes).


def get_server_metadata(key: WorkKey, generation: int, job: str, job_uid: str) -> dict[str, Any]:
    return {
        "name": server_name(job),
        "namespace": key[1],
        "labels": role_labels(key, generation, ROLE_SERVER),
        "ownerReferences": get_owner_references("Job", job, job_uid, "batch/v1"),
    }


def get_model_server_pod(
    settings: JobSettings,
    key: WorkKey,
    generation: int,
    job: str,
    job_uid: str,
    container: dict[str, Any],
) -> dict[str, Any]:
    """A user's model server alone in its Pod: the ServiceAccount without cloud identity,
    no token, restarted by the kubelet (a crash loop is seen and fails the evaluation)."""
    spec = get_pod_spec(
        settings,
        [container],
        service_account=settings.model_server_service_account,
        restart_policy="Always",
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": get_server_metadata(key, generation, job, job_uid),
        "spec": spec,
    }


def get_model_service(
    key: WorkKey, generation: int, job: str, job_uid: str, port: int
) -> dict[str, Any]:
    """The server's stable name for the clients (`model_url`)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": get_server_metadata(key, generation, job, job_uid),
        "spec": {
            "type": "ClusterIP",
            "selector": role_labels(key, generation, ROLE_SERVER),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def get_model_network_policy(
    key: WorkKey, generation: int, job: str, job_uid: str, port: int
) -> dict[str, Any]:
    """In: only this evaluation's client Pods, on the server's port. Out: nothing (no
    storage, no metadata server, no other account, no internet)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": get_server_metadata(key, generation, job, job_uid),
        "spec": {
            "podSelector": {"matchLabels": role_labels(key, generation, ROLE_SERVER)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": role_labels(key, generation, ROLE_CLIENT)}}
                    ],
                    "ports": [{"protocol": "TCP", "port": port}],
                }
            ],
            "egress": [],
        },
    }


# ---------------------------------------------------------------- the image builder
#
# A user's Bento becomes an image in the cluster: kaniko builds the Dockerfile that
# `bentoml build` wrote into it (env/docker/Dockerfile, the Bento as context) and pushes
# it; the digest it pushed is its termination message. The Pod runs the user's Dockerfile,
# so it holds no storage credential: an init container of the runtime image fetches the
# Bento from a short-lived signed URL and unpacks it with dyff's checked extraction. Its
# ServiceAccount may only push to the image repository (docs/kubernetes-isolation.md).

# Private and link-local ranges: the cluster's Pods and Services, and node services.
PRIVATE_RANGES = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
]
# The GKE metadata server (the push credential, by Workload Identity): its address, and
# where GKE Dataplane V2 redirects it.
METADATA_SERVER = [("169.254.169.254/32", 80), ("169.254.169.252/32", 988)]


def build_labels(model_digest: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, LABEL_ROLE: ROLE_BUILDER, LABEL_BUILD: model_digest[:40]}


def get_build_metadata(
    model: Model, owner_uid: str | None, annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A build belongs to the model's namespace, and goes with the Model."""
    assert model.status.digest, "a build needs the model's digest"
    metadata: dict[str, Any] = {
        "name": build_job_name(model.status.digest),
        "namespace": model.account,
        "labels": build_labels(model.status.digest),
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    if owner_uid is not None:
        metadata["ownerReferences"] = get_owner_references("Model", model.name, owner_uid)
    return metadata


def get_builder_security_context() -> dict[str, Any]:
    """kaniko assembles the image's filesystem as root in its container: no escalation,
    only the capabilities that takes, RuntimeDefault seccomp."""
    return {
        "runAsUser": 0,
        "runAsNonRoot": False,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"], "add": list(BUILDER_CAPABILITIES)},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def get_bento_fetcher(settings: JobSettings, bento_url: str) -> dict[str, Any]:
    """dyff's runtime image, without credentials: the signed URL is all it has."""
    return {
        "name": FETCHER,
        "image": settings.image,
        "command": ["python", "-c", FETCH_BENTO_SCRIPT],
        "env": get_env({**OFFLINE_ENV, BENTO_URL_ENV: bento_url}),
        "resources": get_resources(None, DEFAULT_WORKLOAD_RESOURCES),
        "securityContext": get_container_security_context(),
        "volumeMounts": [
            {"name": "workspace", "mountPath": BUILD_WORKSPACE},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def get_image_builder(settings: JobSettings, destination: str) -> dict[str, Any]:
    return {
        "name": BUILDER,
        "image": settings.builder_image,
        "args": [
            f"--context=dir://{BUILD_CONTEXT}",
            f"--dockerfile={BUILD_CONTEXT}/env/docker/Dockerfile",
            f"--destination={destination}",
            # The pushed digest comes back as the container's termination message.
            "--digest-file=/dev/termination-log",
            "--snapshot-mode=redo",
        ],
        "resources": get_resources(None, DEFAULT_BUILDER_RESOURCES),
        "securityContext": get_builder_security_context(),
        "volumeMounts": [{"name": "workspace", "mountPath": BUILD_WORKSPACE}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def get_build_job(
    settings: JobSettings, model: Model, bento_url: str, owner_uid: str | None
) -> dict[str, Any]:
    """One build of one Bento (by digest) into `<repository>/<account>:<digest>`. No TTL:
    the finished Job is the cache (it keeps the digest it pushed)."""
    if not settings.image_repository:
        raise ValueError("DYFF_IMAGE_REPOSITORY is not set")
    image_name = build_image_name(settings.image_repository, model.account)
    metadata = get_build_metadata(model, owner_uid, {ANNOTATION_IMAGE_NAME: image_name})
    pod_spec = {
        "serviceAccountName": settings.builder_service_account,
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [get_bento_fetcher(settings, bento_url)],
        "containers": [get_image_builder(settings, f"{image_name}:{model.status.digest}")],
        "volumes": [
            {"name": "workspace", "emptyDir": {"sizeLimit": WORK_SIZE_LIMIT}},
            {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            # A Dockerfile that fails once fails again; one retry for the infrastructure.
            "backoffLimit": 1,
            "activeDeadlineSeconds": settings.build_deadline_s,
            "template": {"metadata": {"labels": metadata["labels"]}, "spec": pod_spec},
        },
    }


def get_build_network_policy(model: Model, owner_uid: str | None) -> dict[str, Any]:
    """As far as a NetworkPolicy can say it: nothing in; out only DNS, HTTPS outside the
    cluster (the signed URL, base images, packages, the registry) and the metadata server
    that gives the push credential. Nothing inside the cluster."""
    metadata = get_build_metadata(model, owner_uid)
    dns = {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    internet = {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    metadata_server = [
        {"to": [{"ipBlock": {"cidr": cidr}}], "ports": [{"protocol": "TCP", "port": port}]}
        for cidr, port in METADATA_SERVER
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": metadata["labels"]},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [dns, internet, *metadata_server],
        },
    }


# ---------------------------------------------------------------- warm model servers
#
# With DYFF_WARM_IDLE_S > 0 an evaluation's model server is a Deployment (one replica),
# a Service and a NetworkPolicy in the evaluation's namespace, named by what it serves
# (`warm_server_name`): the next evaluation of the same model with the same serving
# settings in that account connects to it instead of waiting for a server to start. The
# executor scales it to zero once no Job has used it for the idle period, back to one
# when an evaluation needs it, and deletes it with its model. The isolation rules are
# those of a server per evaluation: a user's code runs under the ServiceAccount with no
# identity, admits only client Pods that use it, and reaches nothing; dyff's own server
# keeps the workload account and its egress (it reads the Bento from the blob store),
# as its sidecar does. A server never serves two accounts: it lives in one namespace.

LABEL_WARM = "dyff.io/warm-server"
LABEL_USES_WARM = "dyff.io/uses-warm-server"
LABEL_MODEL_ACCOUNT = "dyff.io/model-account"
LABEL_MODEL_NAME = "dyff.io/model-name"
ANNOTATION_LAST_USED = "dyff.io/last-used"


def warm_server_name(settings: JobSettings, model: Model, evaluation: Evaluation) -> str:
    """`dyff-warm-<hash>` of everything that makes the server what it is: the account it
    serves, the model (account, digest, its own image), the runtime image serving dyff's
    Bentos, the knobs, resources and port. Any difference is another server."""
    source = model.spec.source.image
    identity = {
        "account": evaluation.account,
        "model": [model.account, model.status.digest],
        "isolated": is_isolated(model),
        "image": source.reference if source is not None else None,
        "runtime": None if is_isolated(model) else settings.image,
        "knobs": get_model_server_knobs(evaluation, model.spec.resources),
        "resources": model.spec.resources.wire() if model.spec.resources else None,
        "port": model_port(settings, model),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"dyff-warm-{digest[:20]}"


def warm_labels(name: str, model: Model) -> dict[str, str]:
    return {
        MANAGED_BY: MANAGER,
        LABEL_ROLE: ROLE_SERVER,
        LABEL_WARM: name,
        LABEL_MODEL_ACCOUNT: model.account,
        LABEL_MODEL_NAME: model.name,
    }


def get_warm_server_container(
    settings: JobSettings, model: Model, evaluation: Evaluation, image: str | None
) -> dict[str, Any]:
    """The server of `get_model_server`, in a Pod of its own. dyff's own service gets a
    workload config naming the model, not the evaluation: any evaluation may use it."""
    env = get_workload_env(settings, get_workload_config(settings, model))
    container = get_model_server(settings, model, evaluation, env, image=image)
    container.pop("restartPolicy", None)  # a Pod's container, not a sidecar
    return container


def get_warm_deployment(
    settings: JobSettings,
    name: str,
    namespace: str,
    model: Model,
    container: dict[str, Any],
    last_used: str,
) -> dict[str, Any]:
    """One replica of the server; `Recreate`: never two at once for one model."""
    labels = warm_labels(name, model)
    account = (
        settings.model_server_service_account if is_isolated(model) else settings.service_account
    )
    pod_spec = get_pod_spec(settings, [container], service_account=account, restart_policy="Always")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": {ANNOTATION_LAST_USED: last_used},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {LABEL_WARM: name}},
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def get_warm_service(name: str, namespace: str, model: Model, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": warm_labels(name, model)},
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_WARM: name},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def get_warm_network_policy(name: str, namespace: str, model: Model, port: int) -> dict[str, Any]:
    """In: only client Pods that use this server, on its port. Out: nothing for a user's
    code; dyff's own server keeps the egress its sidecar had (the blob store)."""
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {LABEL_WARM: name}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"podSelector": {"matchLabels": {LABEL_USES_WARM: name}}}],
                "ports": [{"protocol": "TCP", "port": port}],
            }
        ],
    }
    if is_isolated(model):
        spec["policyTypes"].append("Egress")
        spec["egress"] = []
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": warm_labels(name, model)},
        "spec": spec,
    }
