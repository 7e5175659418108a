"""The rules of server-side apply, field management, the status subresource and
namespaces that the emulated API server (kmock_cluster.py, ssa.py) follows and dyff's
record sync relies on (controller/sync.py creates an account's namespace, applies each
CR's spec, labels and annotations, then its status through `/status`, as field manager
`dyff`, forced), one test per rule, each citing the Kubernetes documentation it comes
from. The tests talk HTTP to the server and read the objects and their
`metadata.managedFields` back, as a client of a real API server would.

SSA = https://kubernetes.io/docs/reference/using-api/server-side-apply/
CRD = https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.controller.kmock_cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
M1 = "/apis/dyff.io/v1alpha1/namespaces/acme/models/m1"
SPEC = {"source": {"form": "transformers", "uri": {"uri": "gs://b/m", "sha256": "ab" * 32}}}
KUBECTL = {"User-Agent": "kubectl/v1.31.0 (linux/amd64) kubernetes/abcdef"}


def model(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "m1", "namespace": "acme", **meta},
        "spec": SPEC if spec is None else spec,
    }


def status(**fields: Any) -> dict[str, Any]:
    """What the sync applies to `/status`."""
    return {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "m1", "namespace": "acme"},
        "status": fields,
    }


def condition(type: str, status: str = "True", reason: str = "Done") -> dict[str, Any]:
    return {"type": type, "status": status, "reason": reason}


def spec_with(**resources: Any) -> dict[str, Any]:
    return {**SPEC, "resources": resources}


async def apply(
    cluster: Cluster, path: str, body: dict[str, Any], manager: str, *, force: bool = False
) -> tuple[int, dict[str, Any]]:
    """PATCH application/apply-patch+yaml (JSON is YAML), as `kubectl apply --server-side`."""
    params = {"fieldManager": manager, **({"force": "true"} if force else {})}
    headers = {"Content-Type": "application/apply-patch+yaml"}
    async with cluster.patch(path, params=params, data=json.dumps(body), headers=headers) as r:
        return r.status, await r.json()


async def update(
    cluster: Cluster, path: str, patch: Any, headers: dict[str, str], manager: str | None = None
) -> dict[str, Any]:
    """A non-apply PATCH (merge or JSON patch, by its Content-Type): an Update."""
    params = {"fieldManager": manager} if manager else {}
    async with cluster.patch(path, params=params, json=patch, headers=headers) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def owned(doc: dict[str, Any], manager: str, operation: str = "Apply", sub: str = "") -> set[str]:
    """The leaf fields of the managedFields entry (manager, operation, subresource), from
    its FieldsV1 trie, as dotted paths: `f:` dropped, `k:{...}` (a map-list item) kept."""
    paths: set[str] = set()

    def walk(trie: dict[str, Any], prefix: str) -> None:
        for key, sub_trie in trie.items():
            path = f"{prefix}.{key[2:] if key.startswith('f:') else key}".lstrip(".")
            if key != "." and set(sub_trie) - {"."}:
                walk(sub_trie, path)
            elif key != ".":
                paths.add(path)

    for entry in doc["metadata"].get("managedFields", []):
        if (entry["manager"], entry["operation"], entry.get("subresource", "")) == (
            manager,
            operation,
            sub,
        ):
            assert entry["fieldsType"] == "FieldsV1"
            walk(entry["fieldsV1"], "")
    return paths


async def test_apply_creates_the_object_when_it_is_missing(cluster: Cluster) -> None:
    # SSA, introduction: a fully specified intent "either creates a new object (using
    # default values for unspecified fields), or is combined, by the API server, with
    # the existing object." -- the sync's apply is create-or-update. A patch answers
    # 201 Created or 200 OK (API reference, e.g. https://kubernetes.io/docs/reference/
    # kubernetes-api/workload-resources/pod-v1/#patch-partially-update-the-specified-pod).
    code, created = await apply(cluster, M1, model(), "dyff")
    assert code == 201
    assert created["spec"] == SPEC and created["metadata"]["uid"]
    assert created["metadata"]["generation"] == 1
    code, again = await apply(cluster, M1, model(), "dyff")
    assert code == 200 and again["metadata"]["uid"] == created["metadata"]["uid"]


async def test_an_applier_owns_exactly_the_fields_it_applied(cluster: Cluster) -> None:
    # SSA, "Field management": the server tracks managed fields in metadata.managedFields
    # (FieldsV1); "Managers": an apply names its manager with the fieldManager query
    # parameter; "Apply and Update": it is recorded with operation Apply. As in that
    # section's example, labels are owned key by key, and the object's name, namespace
    # and the server's metadata (uid, resourceVersion, ...) by nobody.
    _, doc = await apply(
        cluster, M1, model(labels={"app": "x"}, annotations={"dyff.io/record": "u/1"}), "dyff"
    )
    assert owned(doc, "dyff") == {
        "metadata.labels.app",
        "metadata.annotations.dyff.io/record",
        "spec.source.form",
        "spec.source.uri.uri",
        "spec.source.uri.sha256",
    }
    (entry,) = doc["metadata"]["managedFields"]
    assert entry["apiVersion"] == "dyff.io/v1alpha1" and "subresource" not in entry


async def test_other_writes_are_updates_owned_by_their_field_manager_or_user_agent(
    cluster: Cluster,
) -> None:
    # SSA, "Apply and Update": every other write (POST, PUT, non-apply PATCH) is an
    # Update, and updates managedFields too; "Managers": fieldManager names the manager,
    # and "For other updates, the API server infers a field manager identity from the
    # "User-Agent:" HTTP header (if present)" (kube-apiserver takes the part before the
    # first '/': kopf's writes show up as "kopf").
    url = "/apis/dyff.io/v1alpha1/namespaces/acme/models"
    async with cluster.post(url, json=model(), headers=KUBECTL) as r:
        assert r.status == 201
        created = await r.json()
    assert "spec.source.uri.uri" in owned(created, "kubectl", "Update")
    doc = await update(cluster, M1, {"spec": {"public": True}}, MERGE, manager="argocd")
    assert owned(doc, "argocd", "Update") == {"spec.public"}


async def test_a_changed_value_moves_to_the_manager_that_changed_it(cluster: Cluster) -> None:
    # SSA, "Field management": "Whenever a field's value does change, ownership moves
    # from its current manager to the manager making the change." (A user's
    # `kubectl edit` of a spec field dyff applied takes that field from dyff.)
    await apply(cluster, M1, model(spec_with(cpu="1", memory="1Gi")), "dyff")
    doc = await update(cluster, M1, {"spec": {"resources": {"cpu": "2"}}}, {**MERGE, **KUBECTL})
    assert owned(doc, "kubectl", "Update") == {"spec.resources.cpu"}
    assert "spec.resources.cpu" not in owned(doc, "dyff")
    assert "spec.resources.memory" in owned(doc, "dyff")


async def test_applying_another_managers_field_conflicts_unless_forced(cluster: Cluster) -> None:
    # SSA, "Conflicts": an apply that changes a field another manager owns fails with a
    # 409 Conflict; "Overwrite value, become sole manager": with force=true the apply
    # "changes the value of the field, and removes the field from all other managers'
    # entries in managedFields". "Using Server-Side Apply in a controller": controllers
    # should force (the sync does: dyff's record is the authority for what it applies).
    await apply(cluster, M1, model(spec_with(cpu="1")), "dyff")
    await update(cluster, M1, {"spec": {"resources": {"cpu": "2"}}}, {**MERGE, **KUBECTL})
    code, failure = await apply(cluster, M1, model(spec_with(cpu="3")), "dyff")
    assert code == 409 and failure["reason"] == "Conflict"
    assert cluster.read("dyff.io/v1alpha1/models", "acme", "m1")["spec"]["resources"]["cpu"] == "2"
    code, doc = await apply(cluster, M1, model(spec_with(cpu="3")), "dyff", force=True)
    assert code == 200 and doc["spec"]["resources"]["cpu"] == "3"
    assert "spec.resources.cpu" in owned(doc, "dyff")
    assert "spec.resources.cpu" not in owned(doc, "kubectl", "Update")


async def test_appliers_of_the_same_value_share_it_until_one_lets_go(cluster: Cluster) -> None:
    # SSA, "Field management": "If two or more appliers set a field to the same value,
    # they share ownership of that field. Any subsequent attempt to change the value of
    # the shared field, by any of the appliers, results in a conflict. Shared field
    # owners may give up ownership of a field by making a Server-Side Apply patch request
    # that doesn't include that field." ("Transferring ownership" hands a field over
    # this way: the new manager applies the same value, the old one stops applying it.)
    await apply(cluster, M1, model(spec_with(cpu="1")), "dyff")
    code, doc = await apply(cluster, M1, model(spec_with(cpu="1")), "gitops")
    assert code == 200
    assert "spec.resources.cpu" in owned(doc, "dyff") & owned(doc, "gitops")
    code, _ = await apply(cluster, M1, model(spec_with(cpu="2")), "dyff")
    assert code == 409
    _, doc = await apply(cluster, M1, model(), "dyff")  # dyff lets go of resources
    assert doc["spec"]["resources"] == {"cpu": "1"}
    assert "spec.resources.cpu" in owned(doc, "gitops") - owned(doc, "dyff")


async def test_a_field_its_manager_stops_applying_is_removed(cluster: Cluster) -> None:
    # SSA, "Field management", on a field removed from the applied manifest: "Apply
    # checks if there are any other field managers that also own the field. If the field
    # is not owned by any other field managers, that field is set to its default value
    # (if there is one), or otherwise is deleted from the object. The same rule applies
    # to fields that are lists, associative lists, or maps." (A record that loses an
    # annotation or a spec field loses it on its CR too.)
    first = model(spec_with(cpu="1", memory="1Gi"), annotations={"a": "1", "b": "2"})
    await apply(cluster, M1, first, "dyff")
    _, doc = await apply(cluster, M1, model(spec_with(cpu="1"), annotations={"a": "1"}), "dyff")
    assert doc["metadata"]["annotations"] == {"a": "1"}
    assert doc["spec"]["resources"] == {"cpu": "1"}
    _, doc = await apply(cluster, M1, model(annotations={"a": "1"}), "dyff")
    assert "resources" not in doc["spec"]  # the whole object, nothing in it owned by others


async def test_apply_merges_into_what_others_wrote(cluster: Cluster) -> None:
    # SSA, "Merge strategy": the server "merges it with the live object favoring the
    # value from the request body if it is specified in both places"; fields the applier
    # never applied are not its to remove. (kopf's finalizer and its annotations, written
    # by JSON and merge patches, survive every apply of the sync.)
    await apply(cluster, M1, model(annotations={"dyff.io/record": "u/1"}), "dyff")
    kopf = {**JSON_PATCH, "User-Agent": "kopf/1.45.2"}
    await update(
        cluster,
        M1,
        [{"op": "add", "path": "/metadata/finalizers", "value": ["dyff.io/cleanup"]}],
        kopf,
    )
    await update(
        cluster,
        M1,
        {"metadata": {"annotations": {"kopf.dyff.io/x": "{}"}}},
        {**MERGE, "User-Agent": "kopf/1.45.2"},
    )
    _, doc = await apply(cluster, M1, model(annotations={"dyff.io/record": "u/2"}), "dyff")
    assert doc["metadata"]["finalizers"] == ["dyff.io/cleanup"]
    assert doc["metadata"]["annotations"] == {"dyff.io/record": "u/2", "kopf.dyff.io/x": "{}"}
    assert owned(doc, "kopf", "Update") == {
        "metadata.finalizers",
        "metadata.annotations.kopf.dyff.io/x",
    }


async def test_conditions_merge_by_type_as_the_crd_declares(cluster: Cluster) -> None:
    # SSA, "Merge strategy": a list marked `x-kubernetes-list-type: map` is merged entry
    # by entry ("If set or map, different managers can manage entries separately"), the
    # entries identified by the fields `x-kubernetes-list-map-keys` names; an entry its
    # applier stops applying is removed (the removal rule above: "The same rule applies
    # to ... associative lists"). dyff's CRDs mark status.conditions so, keyed by type:
    crd = yaml.safe_load((ROOT / "crds/dyff.io_models.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]

    st = f"{M1}/status"
    await apply(cluster, M1, model(), "dyff")
    await apply(cluster, st, status(conditions=[condition("Ready", "False", "Waiting")]), "dyff")
    await apply(cluster, st, status(conditions=[condition("Audited")]), "auditor")
    _, doc = await apply(cluster, st, status(conditions=[condition("Ready")]), "dyff")
    assert {c["type"]: c["status"] for c in doc["status"]["conditions"]} == {
        "Ready": "True",
        "Audited": "True",
    }
    assert owned(doc, "dyff", sub="status") == {
        f'status.conditions.k:{{"type":"Ready"}}.{f}' for f in ("type", "status", "reason")
    }
    _, doc = await apply(cluster, st, status(phase="Gone"), "dyff")
    assert [c["type"] for c in doc["status"]["conditions"]] == ["Audited"]


async def test_other_lists_are_atomic(cluster: Cluster) -> None:
    # SSA, "Merge strategy": for custom resources, without those markers "all lists are
    # considered atomic"; an atomic list: "the entire list is replaced during merge. At
    # any point in time, a single manager owns the list." (status.labels, in dyff's CRDs.)
    st = f"{M1}/status"
    await apply(cluster, M1, model(), "dyff")
    await apply(cluster, st, status(labels=["cat", "dog"]), "dyff")
    code, _ = await apply(cluster, st, status(labels=["cow"]), "other")
    assert code == 409
    _, doc = await apply(cluster, st, status(labels=["cow"]), "other", force=True)
    assert doc["status"]["labels"] == ["cow"]
    assert owned(doc, "other", sub="status") == {"status.labels"}
    assert "status.labels" not in owned(doc, "dyff", sub="status")


async def test_the_status_subresource_splits_status_from_the_rest(cluster: Cluster) -> None:
    # CRD, "Status subresource": "PUT requests to the /status subresource take a custom
    # resource object and ignore changes to anything except the status stanza";
    # "PUT/POST/PATCH requests to the custom resource ignore changes to the status
    # stanza". dyff's CRDs enable it (`subresources: status: {}`).
    _, doc = await apply(cluster, M1, {**model(), "status": {"phase": "Ready"}}, "dyff")
    assert "status" not in doc
    body = {**model(spec_with(cpu="9"), labels={"x": "1"}), "status": {"phase": "Ready"}}
    _, doc = await apply(cluster, f"{M1}/status", body, "dyff")
    assert doc["status"] == {"phase": "Ready"}
    assert doc["spec"] == SPEC and "labels" not in doc["metadata"]
    assert doc["metadata"]["generation"] == 1
    doc = await update(cluster, M1, {"status": {"phase": "Failed"}}, MERGE)
    assert doc["status"] == {"phase": "Ready"}


async def test_managers_of_the_status_subresource_are_separate(cluster: Cluster) -> None:
    # ManagedFieldsEntry.subresource
    # (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/):
    # "The value of this field is used to distinguish between managers, even if they
    # share the same name. For example, a status update will be distinct from a regular
    # update using the same manager name." So the sync's spec applies never remove the
    # status it applied, nor its status applies the spec.
    await apply(cluster, M1, model(), "dyff")
    await apply(cluster, f"{M1}/status", status(phase="Ready"), "dyff")
    _, doc = await apply(cluster, M1, model(spec_with(cpu="1")), "dyff")
    assert doc["status"] == {"phase": "Ready"} and doc["spec"]["resources"] == {"cpu": "1"}
    assert owned(doc, "dyff", sub="status") == {"status.phase"}
    assert "spec.resources.cpu" in owned(doc, "dyff")
    kinds = {
        (e["manager"], e["operation"], e.get("subresource"))
        for e in doc["metadata"]["managedFields"]
    }
    assert kinds == {("dyff", "Apply", None), ("dyff", "Apply", "status")}


async def test_generation_counts_spec_changes_and_resource_version_every_change(
    cluster: Cluster,
) -> None:
    # CRD, "Status subresource": "The .metadata.generation value is incremented for all
    # changes, except for changes to .metadata or .status." (observedGeneration in the
    # status the sync writes compares with it.) Resource versions
    # (https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions)
    # "identify the server's internal version of an object": every change has a new one.
    _, doc = await apply(cluster, M1, model(), "dyff")
    versions = [doc["metadata"]["resourceVersion"]]
    for path, body in (
        (M1, model(labels={"a": "b"}, annotations={"c": "d"})),  # metadata
        (f"{M1}/status", status(phase="Ready", observedGeneration=1)),  # status
    ):
        _, doc = await apply(cluster, path, body, "dyff")
        assert doc["metadata"]["generation"] == 1
        versions.append(doc["metadata"]["resourceVersion"])
    doc = await update(cluster, M1, {"spec": {"public": True}}, MERGE)  # spec
    assert doc["metadata"]["generation"] == 2
    versions.append(doc["metadata"]["resourceVersion"])
    assert len(set(versions)) == 4


async def test_objects_go_only_into_namespaces_that_exist(cluster: Cluster) -> None:
    # NamespaceLifecycle, an admission controller on by default
    # (https://kubernetes.io/docs/reference/access-authn-authz/admission-controllers/
    # #namespacelifecycle), "ensures that requests in a non-existent Namespace are
    # rejected". (So the sync creates an account's namespace before its first CR.)
    path = M1.replace("/acme/", "/nowhere/")
    code, failure = await apply(cluster, path, model(namespace="nowhere"), "dyff")
    assert code == 404 and failure["reason"] == "NotFound" and "nowhere" in failure["message"]
    assert cluster.read("dyff.io/v1alpha1/models", "nowhere", "m1") is None
