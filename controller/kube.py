"""The Kubernetes API as the controller uses it: JSON documents in and out, by path.

dyff writes its manifests as dicts (controller/executors/manifests.py, controller/sync.py)
and reads objects back as dicts, so it talks to the API server through the official
client's untyped entry point, `kubernetes.dynamic.DynamicClient.request`: the client's
`Configuration` (kubeconfig or the Pod's ServiceAccount, TLS, proxy), its bearer token
and the loaders' own refresh of it, its connection pool and its status errors — without
the typed models (a Job turned into `V1Job` and back costs more than the request) and
without discovery (every path here is known; discovery would cost requests and a cache
file at start).

Tests and benchmarks point it at an emulated API server with `KubeApi(host=URL)` or a
kubeconfig whose cluster `server` is that URL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError

from dyff.schema import API_VERSION, RESOURCE_TYPES

# The field manager of everything dyff applies (server-side apply).
FIELD_MANAGER = "dyff"
PLURALS = {t.kind_name: t.plural for t in RESOURCE_TYPES}
# Query parameters by their API names, as DynamicClient.request takes them.
QUERY_PARAMETERS = {
    "continue": "_continue",
    "dryRun": "dry_run",
    "fieldManager": "field_manager",
    "fieldSelector": "field_selector",
    "force": "force_conflicts",
    "gracePeriodSeconds": "grace_period_seconds",
    "labelSelector": "label_selector",
    "limit": "limit",
    "propagationPolicy": "propagation_policy",
    "resourceVersion": "resource_version",
    "timeoutSeconds": "timeout_seconds",
}


class ApiError(Exception):
    """A Kubernetes API answer outside 2xx, with its Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @classmethod
    def of(cls, exc: DynamicApiError) -> ApiError:
        """From the client's error: the reason and message of its Status document."""
        raw = exc.body
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"message": str(raw)[:500]}
        if not isinstance(doc, dict):
            doc = {}
        return cls(
            int(exc.status or 0),
            str(doc.get("reason") or exc.reason or ""),
            str(doc.get("message") or ""),
        )


class _NoDiscovery:
    """DynamicClient's `discoverer`: dyff names every path itself, so nothing to find."""

    def __init__(self, client: Any, cache_file: Any) -> None:
        pass


class KubeApi:
    """Blocking JSON requests to one API server; safe to share between threads."""

    def __init__(
        self,
        configuration: client.Configuration | None = None,
        *,
        host: str | None = None,
        pool_size: int = 32,
        timeout: float = 30.0,
    ) -> None:
        cfg = configuration if configuration is not None else client.Configuration()
        if host is not None:
            cfg.host = host
        # Reconcile passes and the sync call from many threads at once.
        cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, pool_size)
        self.host: str = cfg.host
        self.timeout = timeout
        self._api_client = client.ApiClient(cfg)
        self._api_client.user_agent = "dyff-controller"
        self._dynamic = DynamicClient(self._api_client, discoverer=_NoDiscovery)

    @classmethod
    def from_environment(cls) -> KubeApi:
        """In a Pod: its ServiceAccount; elsewhere: the current kubeconfig context
        (`config.ConfigException` when there is neither)."""
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            return cls.from_kubeconfig()
        return cls(cfg)

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, context: str | None = None) -> KubeApi:
        """A kubeconfig file (default: $KUBECONFIG, else ~/.kube/config) and context."""
        cfg = client.Configuration()
        config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
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
        params: dict[str, Any] = {}
        for name, value in (query or {}).items():
            if name not in QUERY_PARAMETERS:
                raise ValueError(f"unsupported query parameter {name!r}")
            params[QUERY_PARAMETERS[name]] = (
                str(value).lower() if isinstance(value, bool) else value
            )
        if content_type is not None and content_type.startswith("application/apply-patch"):
            # JSON is YAML: the client sends a string body as it is.
            body = json.dumps(body)
        try:
            response = self._dynamic.request(
                method,
                path,
                body=body,
                content_type=content_type,
                serialize=False,
                _request_timeout=self.timeout,
                **params,
            )
        except DynamicApiError as exc:
            raise ApiError.of(exc) from None
        raw = response.data
        doc = json.loads(raw) if raw else {}
        return doc if isinstance(doc, dict) else {"items": doc}

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def server_version(self) -> tuple[int, int]:
        """(major, minor) of the API server; GKE's minor reads like `29+`."""
        doc = self.get("/version")
        return int(str(doc["major"]).rstrip("+")), int(str(doc["minor"]).rstrip("+"))

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

    def apply(
        self, path: str, body: dict[str, Any], manager: str = FIELD_MANAGER
    ) -> dict[str, Any]:
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

    def select(self, path: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """The items of a collection whose labels are `labels` (the API server selects;
        the check here keeps that a guarantee)."""
        items = self.get(path, labelSelector=selector(labels)).get("items", [])
        return [
            item
            for item in items
            if all((item["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    def close(self) -> None:
        self._api_client.close()


def custom_object_path(kind: str, namespace: str, name: str | None = None) -> str:
    path = f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def job_path(namespace: str | None, name: str | None = None) -> str:
    """Jobs of a namespace (of all namespaces: None), or one of them."""
    path = f"/apis/batch/v1/namespaces/{namespace}/jobs" if namespace else "/apis/batch/v1/jobs"
    return f"{path}/{name}" if name else path


# The built-in resources dyff creates in account namespaces, by plural: their API prefix.
CORE_RESOURCES = {
    "pods": "/api/v1",
    "services": "/api/v1",
    "serviceaccounts": "/api/v1",
    "networkpolicies": "/apis/networking.k8s.io/v1",
    "jobs": "/apis/batch/v1",
    "deployments": "/apis/apps/v1",
}
KIND_PLURALS = {
    "Pod": "pods",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "NetworkPolicy": "networkpolicies",
    "Job": "jobs",
    "Deployment": "deployments",
}


def resource_path(plural: str, namespace: str, name: str | None = None) -> str:
    """A namespaced built-in resource's collection (`pods`, `services`, ...), or one
    object of it."""
    path = f"{CORE_RESOURCES[plural]}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


def object_path(doc: Mapping[str, Any]) -> str:
    """Where a manifest of a namespaced built-in kind lives."""
    meta = doc["metadata"]
    return resource_path(KIND_PLURALS[doc["kind"]], meta["namespace"], meta["name"])


def selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


# Evaluation Pods run the model server as a native sidecar (an init container with
# restartPolicy Always): on by default from Kubernetes 1.29.
NATIVE_SIDECARS = (1, 29)


def unsupported_server(version: tuple[int, int]) -> str | None:
    """Why dyff's Jobs cannot run on a server of `version`, or None."""
    if version < NATIVE_SIDECARS:
        return (
            f"this cluster runs Kubernetes {version[0]}.{version[1]}; dyff's evaluation Pods "
            f"need native sidecar containers, Kubernetes {'.'.join(map(str, NATIVE_SIDECARS))}"
            " or later"
        )
    return None
