"""controller/kube.py against an emulated API server: paths, queries, bodies and errors
as the API server sees them, and credentials as the official loaders keep them."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from controller.kube import ApiError, KubeApi, custom_object_path, job_path, selector
from tests.controller.kmock_cluster import Cluster

SA = "/api/v1/namespaces/acme/serviceaccounts"


def service_account(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}


async def test_create_get_patch_apply_delete(cluster: Cluster) -> None:
    api = KubeApi(host=cluster.api_url)
    created = await asyncio.to_thread(api.create, SA, service_account("a"))
    assert created["metadata"]["uid"]
    assert (await asyncio.to_thread(api.get, f"{SA}/a"))["metadata"]["name"] == "a"

    patch = {"metadata": {"labels": {"x": "1"}}}
    await asyncio.to_thread(api.merge_patch, f"{SA}/a", patch)
    applied = await asyncio.to_thread(
        api.apply, f"{SA}/b", {**service_account("b"), "automountServiceAccountToken": False}
    )
    assert applied["automountServiceAccountToken"] is False
    listing = await asyncio.to_thread(api.get, SA, labelSelector=selector({"x": "1"}))
    assert [i["metadata"]["name"] for i in listing["items"]] == ["a"]

    requests = [r for r in cluster if "serviceaccounts" in str(r.url)]
    kinds = [(r.method, r.headers.get("Content-Type", "").split(";")[0]) for r in requests]
    assert kinds[2] == ("PATCH", "application/merge-patch+json")
    assert kinds[3] == ("PATCH", "application/apply-patch+yaml")
    assert requests[3].params["fieldManager"] == "dyff"
    assert requests[3].params["force"] == "true"
    assert all(r.headers.get("User-Agent") == "dyff-controller" for r in requests)

    await asyncio.to_thread(api.delete, f"{SA}/a")
    assert cluster.read("v1/serviceaccounts", "acme", "a") is None
    delete = [r for r in cluster if r.method == "DELETE"][-1]
    assert delete.params["propagationPolicy"] == "Background"


async def test_errors_carry_the_status_and_gone_is_none(cluster: Cluster) -> None:
    api = KubeApi(host=cluster.api_url)
    assert await asyncio.to_thread(api.find, f"{SA}/nobody") is None
    assert await asyncio.to_thread(api.delete, f"{SA}/nobody") is None
    await asyncio.to_thread(api.create, SA, service_account("a"))
    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(api.create, SA, service_account("a"))
    assert (info.value.status, info.value.reason) == (409, "AlreadyExists")
    assert "'a' already exists" in info.value.message
    with pytest.raises(ValueError, match="unsupported query parameter"):
        api.get(SA, labelselector="x=1")


async def test_list_pages_with_limit_and_continue(cluster: Cluster) -> None:
    api = KubeApi(host=cluster.api_url)
    await asyncio.to_thread(api.get, job_path(None), limit=500, **{"continue": "tok"})
    (request,) = [r for r in cluster if r.method == "GET"]
    assert (request.params["limit"], request.params["continue"]) == ("500", "tok")


def test_paths() -> None:
    assert custom_object_path("Evaluation", "acme", "e1") == (
        "/apis/dyff.io/v1alpha1/namespaces/acme/evaluations/e1"
    )
    assert job_path("acme", "j") == "/apis/batch/v1/namespaces/acme/jobs/j"
    assert job_path(None) == "/apis/batch/v1/jobs"
    assert selector({"b": "2", "a": "1"}) == "a=1,b=2"


def exec_kubeconfig(tmp_path: Path, server: str, expiry: str) -> tuple[Path, Path]:
    """A kubeconfig whose user runs a credential plugin (as GKE's and EKS's do) that
    counts its runs and hands out token-<run>."""
    runs = tmp_path / "runs"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, pathlib\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "n = len(runs.read_text()) + 1 if runs.exists() else 1\n"
        "runs.write_text('x' * n)\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1',\n"
        "    'kind': 'ExecCredential',\n"
        f"    'status': {{'token': f'token-{{n}}', 'expirationTimestamp': {expiry!r}}}}}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": [str(plugin)],
        }
    }
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": "me", "user": user}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "me"}}],
                "current-context": "kmock",
            }
        )
    )
    return path, runs


async def test_kubeconfig_credentials_are_fetched_once_until_they_expire(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The credential plugin runs at load, not on every request (it may take seconds)."""
    path, runs = exec_kubeconfig(tmp_path, cluster.api_url, "2999-01-01T00:00:00Z")
    api = KubeApi.from_kubeconfig(str(path))
    for _ in range(20):
        await asyncio.to_thread(api.find, f"{SA}/nobody")
    assert runs.read_text() == "x"
    assert {r.headers.get("Authorization") for r in cluster} == {"Bearer token-1"}


async def test_expired_kubeconfig_credentials_are_fetched_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    path, runs = exec_kubeconfig(tmp_path, cluster.api_url, "2000-01-01T00:00:00Z")
    api = KubeApi.from_kubeconfig(str(path))
    await asyncio.to_thread(api.find, f"{SA}/nobody")
    assert len(runs.read_text()) == 2  # at load, then before the request
    assert list(cluster)[-1].headers.get("Authorization") == "Bearer token-2"


async def test_the_server_version_decides_whether_dyffs_jobs_can_run(cluster: Cluster) -> None:
    """The emulator reports Kubernetes 1.33: new enough. 1.28 is too old for native
    sidecars, and said so."""
    from controller.kube import unsupported_server

    api = KubeApi(host=cluster.api_url)
    version = await asyncio.to_thread(api.server_version)
    assert version == (1, 33) and unsupported_server(version) is None
    why = unsupported_server((1, 26))
    assert why is not None and "1.26" in why and "1.29" in why
    assert unsupported_server((1, 29)) is None and unsupported_server((2, 0)) is None
    assert unsupported_server((1, 28)) is not None
