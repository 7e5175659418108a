"""Executor: workloads as Kubernetes Jobs (`batch/v1`), one per object and generation.

Ingestion runs one container of the runtime image. An evaluation runs one Pod per shard
range: the model server as a native sidecar (an init container with `restartPolicy:
Always`, so the Job completes when the client exits, and the client starts only once
the server's startup probe passes) beside the evaluation client, which reaches it on
loopback. `spec.run.parallelism > 1` makes it an Indexed Job whose Pods take the
shards of their `JOB_COMPLETION_INDEX`.

The Job carries everything the workload needs in its environment (the workload config
as JSON), so no ConfigMap is created; this module is also the Pod's entry point
(`python -m controller.executors.kubernetes workload MODULE | serve-model`), which
turns that environment into the `--config FILE` every workload takes.

Nothing is kept in memory: the Jobs are the state, so a restarted controller finds
its work where it left it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from controller.executors import WorkKey
from controller.reconcilers.common import Workload, WorkState
from dyff import layout
from dyff.schema import (
    API_VERSION,
    RESOURCE_TYPES,
    Entity,
    Evaluation,
    Model,
    Resources,
    entity_type,
)
from dyff.stores.records import RecordStore

log = logging.getLogger("dyff.controller.kubernetes")

LABEL_KIND = "dyff.io/kind"
LABEL_NAME = "dyff.io/name"
LABEL_GENERATION = "dyff.io/generation"
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "dyff"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
PLURALS = {t.kind_name: t.plural for t in RESOURCE_TYPES}
SHORT = {"Model": "model", "Dataset": "data", "Evaluation": "eval"}
# Indexed Pods are named `<job>-<index>-<suffix>` and their hostname `<job>-<index>`,
# which must stay a DNS label (63): leave room for the index.
MAX_JOB_NAME = 52

# The runtime image (config/runtime/Dockerfile) runs as 10001 with HOME=/home/dyff,
# workdir /work, BENTOML_HOME=/work/bentoml; the root filesystem is read-only, so /work
# and /tmp are emptyDirs.
RUNTIME_UID = 10001
WORK_MOUNTS = [
    {"name": "work", "mountPath": "/work"},
    {"name": "tmp", "mountPath": "/tmp"},
]
WORK_VOLUMES = [{"name": "work", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
WORKLOAD_CONTAINER = {"evaluate": "evaluate", "ingest_model": "ingest", "ingest_dataset": "ingest"}
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
PASSTHROUGH_ENV = ("DATASTORE_EMULATOR_HOST", "DATASTORE_PROJECT_ID", "STORAGE_EMULATOR_HOST")


# ---------------------------------------------------------------- API access


class ApiError(Exception):
    """A Kubernetes API answer outside 2xx, with its Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeApi:
    """Raw JSON requests through the official client's connection handling (TLS,
    bearer tokens and their refresh, kubeconfig or in-cluster config), without its
    typed models: dyff writes manifests as dicts and reads them back as dicts."""

    def __init__(
        self, configuration: Any = None, *, host: str | None = None, pool_size: int = 32
    ) -> None:
        from kubernetes import client

        cfg = configuration if configuration is not None else client.Configuration()
        if host is not None:
            cfg.host = host
        # Reconcile passes and the sync call from many threads at once.
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, pool_size)
        # The config loaders refresh credentials through a hook the client calls on every
        # request; the kubeconfig one reloads the whole config each time (milliseconds of
        # CPU per request). Tokens live for minutes at least: refresh every 30 s.
        if cfg.refresh_api_key_hook is not None:
            _throttle_refresh(cfg, 30.0)
        self.host = cfg.host
        self._client = client.ApiClient(cfg)
        self.timeout = 30.0

    @classmethod
    def from_environment(cls) -> KubeApi:
        """In a Pod: its ServiceAccount; elsewhere: the current kubeconfig context."""
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
        return cls(cfg)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        # The client's connection pool (TLS, client certificates, proxy) and its bearer
        # token, but not its request serialisation: dyff's bodies are JSON already, and
        # walking them again costs more than the request itself.
        cfg = self._client.configuration
        headers = {"Accept": "application/json", "User-Agent": "dyff-controller"}
        token = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        data = None
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            data = json.dumps(body).encode()
        url = cfg.host.rstrip("/") + path
        if query:
            params = {
                k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in query.items()
            }
            url += "?" + urlencode(params)
        response = self._client.rest_client.pool_manager.request(
            method, url, body=data, headers=headers, timeout=self.timeout
        )
        raw = response.data
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"message": raw[:500].decode(errors="replace")}
        if response.status >= 400:
            raise ApiError(
                response.status,
                str(doc.get("reason") or response.reason or ""),
                str(doc.get("message") or ""),
            )
        return doc if isinstance(doc, dict) else {"items": doc}

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def find(self, path: str) -> dict[str, Any] | None:
        """GET, or None where the object does not exist."""
        try:
            return self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, body=body)

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    def apply(self, path: str, body: dict[str, Any], manager: str = MANAGER) -> dict[str, Any]:
        """Server-side apply (create or update) as field manager `manager`, taking over
        fields another manager set (dyff is the authority for what it applies)."""
        return self.request(
            "PATCH",
            path,
            query={"fieldManager": manager, "force": True},
            body=body,
            content_type="application/apply-patch+yaml",
        )

    def delete(self, path: str, *, propagation: str = "Background") -> dict[str, Any] | None:
        """DELETE; None where it was already gone."""
        try:
            return self.request(
                "DELETE",
                path,
                query={"propagationPolicy": propagation},
                body={
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "propagationPolicy": propagation,
                },
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def close(self) -> None:
        self._client.close()


def _throttle_refresh(cfg: Any, every: float) -> None:
    """Call the configuration's credential refresh hook at most every `every` seconds.
    The kubeconfig loader's hook installs itself again each time it runs: keep ours on
    top of whatever hook is current."""
    state = {"hook": cfg.refresh_api_key_hook, "last": float("-inf")}
    lock = threading.Lock()

    def refresh(configuration: Any) -> None:
        with lock:
            now = time.monotonic()
            if now - state["last"] < every:
                return
            state["last"] = now
            state["hook"](configuration)
            if configuration.refresh_api_key_hook is not refresh:
                state["hook"] = configuration.refresh_api_key_hook
                configuration.refresh_api_key_hook = refresh

    cfg.refresh_api_key_hook = refresh


def custom_object_path(kind: str, namespace: str, name: str | None = None) -> str:
    path = f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


# ---------------------------------------------------------------- the Jobs


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


def _resources(spec: Resources | None, default: dict[str, Any]) -> dict[str, Any]:
    if spec is None or not (spec.cpu or spec.memory or spec.gpu):
        return json.loads(json.dumps(default))
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if spec.cpu:
        requests["cpu"] = spec.cpu
    if spec.memory:
        requests["memory"] = limits["memory"] = spec.memory
    if spec.gpu:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = spec.gpu
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _container_security() -> dict[str, Any]:
    # The restricted Pod Security profile, and a read-only root filesystem.
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def _http_probes(port: int) -> dict[str, Any]:
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
            "periodSeconds": 10,
            "timeoutSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": port},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
    }


class KubernetesExecutor:
    """Executor protocol over Jobs. Every method is blocking (the Kubernetes client is
    synchronous); reconcile passes run in threads."""

    runs_containers = True

    def __init__(self, api: KubeApi, records: RecordStore, settings: JobSettings) -> None:
        self.api = api
        self.records = records
        self.settings = settings
        self._accounts_ready: set[str] = set()
        self._lock = threading.Lock()
        # Objects that may have Jobs: those found at the first look, and those this
        # process started work for. Others have none, so `state` needs no API call for
        # them (the many objects waiting for an upload or a dependency). The controller
        # is the only one creating dyff Jobs (one replica, Recreate).
        self._may_have_jobs: set[WorkKey] | None = None

    # ---- the protocol

    def state(self, key: WorkKey) -> WorkState:
        with self._lock:
            known = self._may_have_jobs
        if known is None:
            found = set(self.work_keys())
            with self._lock:
                if self._may_have_jobs is None:
                    self._may_have_jobs = found
                known = self._may_have_jobs
        if key not in known:
            return WorkState()
        jobs = [j for j in self._jobs(key) if not j["metadata"].get("deletionTimestamp")]
        if not jobs:
            return WorkState()
        job = max(jobs, key=_generation)
        return self._job_state(job)

    def start(self, key: WorkKey, workload: Workload, generation: int) -> None:
        kind, account, name = key
        entity = self.records.find(entity_type(kind), account, name)
        if entity is None:
            return  # its record is gone; the next pass stops everything for it
        model = None
        if isinstance(entity, Evaluation):
            ref = entity.spec.model
            model = self.records.find(Model, ref.account or account, ref.name)
            if model is None:
                raise RuntimeError(f"model {ref.name!r} of evaluation {name!r} is gone")
        self.ensure_service_account(account)
        with self._lock:
            if self._may_have_jobs is not None:
                self._may_have_jobs.add(key)  # before it exists: `state` will look for it
        owner = self.api.find(custom_object_path(kind, account, name))
        owner_uid = owner["metadata"]["uid"] if owner else None
        manifest = self.job_manifest(entity, workload, generation, owner_uid=owner_uid, model=model)
        try:
            self.api.create(f"/apis/batch/v1/namespaces/{account}/jobs", manifest)
        except ApiError as exc:
            if exc.status != 409:
                raise
            existing = self.api.find(
                f"/apis/batch/v1/namespaces/{account}/jobs/{manifest['metadata']['name']}"
            )
            if existing is not None and existing["metadata"].get("deletionTimestamp"):
                # Same generation restarted while its old Job still terminates: next pass.
                raise RuntimeError(
                    f"Job {manifest['metadata']['name']} is still terminating"
                ) from exc
            # Otherwise it is this very Job, started by an earlier pass: nothing to do.
        log.info("started %s for %s %s/%s (generation %d)", workload, *key, generation)

    def stop(self, key: WorkKey) -> None:
        _, account, _ = key
        for job in self._jobs(key):
            if job["metadata"].get("deletionTimestamp"):
                continue
            # Background: the Job goes now, its Pods after it (the sidecar server too).
            self.api.delete(f"/apis/batch/v1/namespaces/{account}/jobs/{job['metadata']['name']}")

    def work_keys(self) -> list[WorkKey]:
        listing = self.api.get("/apis/batch/v1/jobs", labelSelector=selector({MANAGED_BY: MANAGER}))
        keys = set()
        for job in listing.get("items", []):
            labels = job["metadata"].get("labels") or {}
            if labels.get(MANAGED_BY) == MANAGER and LABEL_KIND in labels and LABEL_NAME in labels:
                keys.add((labels[LABEL_KIND], job["metadata"]["namespace"], labels[LABEL_NAME]))
        return sorted(keys)

    def close(self) -> None:
        pass  # the Jobs outlive the controller on purpose

    # ---- observing

    def _jobs(self, key: WorkKey) -> list[dict[str, Any]]:
        _, account, _ = key
        wanted = work_labels(key)
        listing = self.api.get(
            f"/apis/batch/v1/namespaces/{account}/jobs", labelSelector=selector(wanted)
        )
        # Filter here too: the selector is the API server's, the guarantee is ours.
        return [
            j
            for j in listing.get("items", [])
            if all((j["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]

    def _job_state(self, job: dict[str, Any]) -> WorkState:
        generation = _generation(job)
        status = job.get("status") or {}
        true = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
        if "Complete" in true or "SuccessCriteriaMet" in true:
            return WorkState("succeeded", generation)
        failed = true.get("Failed") or true.get("FailureTarget")
        if failed is None:
            return WorkState("running", generation)
        if failed.get("reason") == "PodFailurePolicy":
            # Our only FailJob rule is exit code 2: the workload reported a user error
            # in the record, as a local workload exiting 2 does.
            return WorkState("succeeded", generation)
        message = failed.get("message") or failed.get("reason") or "Job failed"
        detail = self._termination_message(job)
        return WorkState("failed", generation, f"{message}; {detail}" if detail else message)

    def _termination_message(self, job: dict[str, Any]) -> str:
        """The failed container's own words (its termination message, or the tail of its
        log: terminationMessagePolicy FallbackToLogsOnError)."""
        meta = job["metadata"]
        try:
            pods = self.api.get(
                f"/api/v1/namespaces/{meta['namespace']}/pods",
                labelSelector=selector({JOB_NAME_LABEL: meta["name"]}),
            ).get("items", [])
        except ApiError:
            return ""
        found = ""
        for pod in pods:
            if (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) != meta["name"]:
                continue
            status = pod.get("status") or {}
            for cs in (status.get("containerStatuses") or []) + (
                status.get("initContainerStatuses") or []
            ):
                term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
                    "terminated"
                )
                if term and term.get("exitCode", 0) != 0:
                    words = (term.get("message") or "").strip() or term.get("reason") or ""
                    found = f"{cs.get('name')}: exit {term.get('exitCode')}: {words}"[:600]
        return found

    # ---- starting

    def ensure_service_account(self, account: str) -> None:
        """The workload ServiceAccount in the account's namespace, from the template
        (created, or its labels and annotations patched), once per process."""
        with self._lock:
            if account in self._accounts_ready:
                return
        import yaml

        name = self.settings.service_account
        template: dict[str, Any] = {"apiVersion": "v1", "kind": "ServiceAccount"}
        if self.settings.service_account_template is not None:
            template = yaml.safe_load(self.settings.service_account_template.read_text())
        meta = template.setdefault("metadata", {})
        meta["name"], meta["namespace"] = name, account
        path = f"/api/v1/namespaces/{account}/serviceaccounts"
        current = self.api.find(f"{path}/{name}")
        if current is None:
            try:
                self.api.create(path, template)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        else:
            have = current.get("metadata", {})
            want = {k: meta.get(k) or {} for k in ("labels", "annotations")}
            if any(any((have.get(k) or {}).get(x) != y for x, y in want[k].items()) for k in want):
                self.api.merge_patch(f"{path}/{name}", {"metadata": want})
        with self._lock:
            self._accounts_ready.add(account)

    def job_manifest(
        self,
        entity: Entity,
        workload: Workload,
        generation: int,
        *,
        owner_uid: str | None,
        model: Model | None = None,
    ) -> dict[str, Any]:
        """The Job for one workload of one object (a pure function, for tests)."""
        s = self.settings
        kind, account, name = entity.kind, entity.account, entity.name
        key = (kind, account, name)
        labels = work_labels(key, generation)
        config: dict[str, Any] = {
            "recordsUrl": s.records_url,
            "blobsUrl": s.blobs_url,
            "account": account,
            "name": name,
            "scratchDir": "/work/scratch",
        }
        parallelism = 1
        if isinstance(entity, Evaluation):
            parallelism = entity.spec.run.parallelism
            if parallelism > 1:
                config["shardCount"] = parallelism
        common_env = {**s.env, "DYFF_WORKLOAD_CONFIG": json.dumps(config, sort_keys=True)}
        client: dict[str, Any] = {
            "name": WORKLOAD_CONTAINER[workload],
            "image": s.image,
            "command": [
                "python",
                "-m",
                "controller.executors.kubernetes",
                "workload",
                f"dyff.workloads.{workload}",
            ],
            "env": _env(common_env),
            "resources": _resources(None, DEFAULT_WORKLOAD_RESOURCES),
            "securityContext": _container_security(),
            "volumeMounts": WORK_MOUNTS,
            "terminationMessagePolicy": "FallbackToLogsOnError",
        }
        pod: dict[str, Any] = {
            "serviceAccountName": s.service_account,
            # The workloads never call the Kubernetes API.
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "fsGroup": RUNTIME_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [client],
            "volumes": WORK_VOLUMES,
        }
        if workload == "evaluate":
            assert model is not None, "an evaluation Job needs its model"
            port = model.spec.source.image.port if model.spec.source.image else s.model_port
            client["env"] = _env({**common_env, "DYFF_MODEL_URL": f"http://127.0.0.1:{port}"})
            pod["initContainers"] = [self._model_server(model, common_env, port)]
        spec: dict[str, Any] = {
            "backoffLimit": s.backoff_limit,
            "activeDeadlineSeconds": (
                s.evaluate_deadline_s if workload == "evaluate" else s.ingest_deadline_s
            ),
            "ttlSecondsAfterFinished": s.ttl_after_finished_s,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": client["name"],
                            "operator": "In",
                            "values": [REPORTED_EXIT_CODE],
                        },
                    },
                    # Evicted or preempted Pods are not the workload's fault.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod},
        }
        if parallelism > 1:
            spec.update(completionMode="Indexed", completions=parallelism, parallelism=parallelism)
        metadata: dict[str, Any] = {
            "name": job_name(key, generation),
            "namespace": account,
            "labels": labels,
        }
        if owner_uid is not None:
            # The Job (and its Pods) go with the custom resource.
            metadata["ownerReferences"] = [
                {
                    "apiVersion": API_VERSION,
                    "kind": kind,
                    "name": name,
                    "uid": owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}

    def _model_server(self, model: Model, common_env: dict[str, str], port: int) -> dict[str, Any]:
        """The model server as a native sidecar: the user's image, or the runtime image
        serving the model's packaged Bento fetched from the blob store."""
        resources = model.spec.resources
        image = model.spec.source.image
        if image is not None:
            from dyff.models import model_server_container

            server = model_server_container(image.reference, port, resources)
            server.setdefault("resources", _resources(None, DEFAULT_SERVER_RESOURCES))
        else:
            if not model.status.digest:
                raise RuntimeError(f"model {model.name!r} has no packaged Bento")
            server = {
                "name": "model-server",
                "image": self.settings.image,
                "command": ["python", "-m", "controller.executors.kubernetes", "serve-model"],
                "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                "env": _env(
                    {
                        **common_env,
                        "DYFF_BENTO_KEY": layout.bento_key(model.account, model.status.digest),
                        "BENTOML_PORT": str(port),
                    }
                ),
                "resources": _resources(resources, DEFAULT_SERVER_RESOURCES),
                "securityContext": _container_security(),
                "volumeMounts": WORK_MOUNTS,
                **_http_probes(port),
            }
        server["restartPolicy"] = "Always"
        server["terminationMessagePolicy"] = "FallbackToLogsOnError"
        return server


def _generation(job: dict[str, Any]) -> int:
    try:
        return int((job["metadata"].get("labels") or {}).get(LABEL_GENERATION, 0))
    except ValueError:
        return 0


# ---------------------------------------------------------------- in the Pod


def _workload_config_file(environ: Mapping[str, str]) -> Path:
    """The workload config from DYFF_WORKLOAD_CONFIG, with this Pod's shard of an
    Indexed Job, written where the read-only image allows."""
    config = json.loads(environ["DYFF_WORKLOAD_CONFIG"])
    index = environ.get("JOB_COMPLETION_INDEX")
    if index is not None:
        config["shardIndex"] = int(index)
        config.setdefault("shardCount", 1)
    path = Path(environ.get("TMPDIR", "/tmp")) / "dyff-workload.json"
    path.write_text(json.dumps(config))
    return path


def main(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    """The entry point of a workload Pod's containers."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "workload" and args[1].startswith("dyff.workloads."):
        path = _workload_config_file(environ)
        os.execv(sys.executable, [sys.executable, "-m", args[1], "--config", str(path)])
    if args == ["serve-model"]:
        from dyff.models import bento_env, unpack_bento
        from dyff.stores import open_blobs

        config = json.loads(environ["DYFF_WORKLOAD_CONFIG"])
        work = Path(environ.get("DYFF_WORK_DIR", "/work"))
        blobs = open_blobs(config["blobsUrl"])
        archive = blobs.download(environ["DYFF_BENTO_KEY"], work / "model.bento")
        target = unpack_bento(archive, work / "bento")
        archive.unlink()
        env = bento_env(Path(environ.get("BENTOML_HOME", str(work / "bentoml"))))
        port = environ.get("BENTOML_PORT", "3000")
        # All interfaces: the kubelet probes the Pod IP; the client uses loopback.
        cmd = [sys.executable, "-m", "bentoml", "serve", str(target)]
        cmd += ["--host", "0.0.0.0", "--port", port]
        os.execve(sys.executable, cmd, env)
    print(
        "usage: python -m controller.executors.kubernetes "
        "(workload dyff.workloads.<name> | serve-model)",
        file=sys.stderr,
    )
    return 64


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
