"""Records and custom resources kept in step, without kopf: the record sync against an
emulated API server, adoption of CR specs, generation translation, restarts."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from controller.kopf_adapter import FINALIZER, Controller
from controller.kube import ApiError, KubeApi
from controller.sync import (
    CR_GENERATION,
    RECORD_REF,
    KeyLocks,
    RecordSync,
    adopt,
    cr_manifest,
    cr_status,
)
from dyff.access import GIT_SOURCE, GITOPS, MANAGED_BY
from dyff.schema import Evaluation, Model, utcnow
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore
from tests import factories
from tests.controller.conftest import EVALUATIONS, MODELS, FakeWorkloads, kubectl_patch, report
from tests.controller.kmock_cluster import Cluster

E1 = "/apis/dyff.io/v1alpha1/namespaces/acme/evaluations/e1"


async def nothing_to_finalize(*_: Any) -> None:
    raise AssertionError("nothing is being deleted here")


def make_sync(cluster: Cluster, records: RecordStore, api: KubeApi | None = None) -> RecordSync:
    return RecordSync(
        records,
        api or KubeApi(host=cluster.api_url),
        locks=KeyLocks(),
        finalize=nothing_to_finalize,
    )


def applies(cluster: Cluster, subresource: str | None = None) -> list[Any]:
    return [
        r
        for r in cluster
        if r.method == "PATCH"
        and r.headers.get("Content-Type") == "application/apply-patch+yaml"
        and r.subresource == subresource
    ]


async def test_a_record_becomes_its_cr_by_server_side_apply(
    cluster: Cluster, records: RecordStore
) -> None:
    created, _ = records.create(factories.evaluation("e1", account="globex"))
    sync = make_sync(cluster, records)
    await sync.list_crs()
    assert await sync.poll_once() == 1

    cr = cluster.read(EVALUATIONS, "globex", "e1")
    assert cr["spec"] == created.spec.wire()
    assert cr["metadata"]["annotations"][RECORD_REF] == f"{created.metadata.uid}/1"
    assert cluster.read("v1/namespaces", None, "globex")  # the account's namespace, created first
    (apply,) = applies(cluster)
    assert apply.params == {"fieldManager": "dyff", "force": "true"}
    assert applies(cluster, "status") == []  # a new record's empty status: nothing to write
    assert await sync.poll_once() == 0


async def test_status_is_mirrored_at_the_crs_generation(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    records.create(factories.evaluation("e1"))
    sync = make_sync(cluster, records)
    await sync.poll_once()
    # The CR's generation moves on while its spec comes back to the record's.
    await kubectl_patch(cluster, E1, {"spec": {"inference": {"topK": 3}}})
    await kubectl_patch(cluster, E1, {"spec": {"inference": {"topK": 5}}})
    await sync.list_crs()
    assert cluster.read(EVALUATIONS, "acme", "e1")["metadata"]["generation"] == 3

    report(records, blobs, ("Evaluation", "acme", "e1"), "evaluate")  # Complete, at gen 1
    await sync.poll_once()
    status = cluster.read(EVALUATIONS, "acme", "e1")["status"]
    assert status["phase"] == "Complete" and status["metrics"]["accuracy"] == 0.9
    assert status["observedGeneration"] == 3
    assert status["conditions"][0]["observedGeneration"] == 3


def test_cr_status_translation() -> None:
    evaluation = factories.evaluation("e1")
    evaluation.metadata.generation = 4
    evaluation.status.observed_generation = 4
    evaluation.status.set_condition("Ready", "False", "Running", "", 3)
    status = cr_status(evaluation, cr_generation=9, current=True)
    assert status["observedGeneration"] == 9  # for this spec
    assert status["conditions"][0]["observedGeneration"] == 8  # behind it
    stale = cr_status(evaluation, cr_generation=9, current=False)  # the CR's spec moved on
    assert stale["observedGeneration"] == 8
    evaluation.status.observed_generation = 0
    assert cr_status(evaluation, cr_generation=9, current=True)["observedGeneration"] == 0


async def test_a_users_cr_edit_wins_over_later_record_writes(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    records.create(factories.evaluation("e1"))
    sync = make_sync(cluster, records)
    await sync.poll_once()
    cr = await kubectl_patch(cluster, E1, {"spec": {"inference": {"topK": 3}}})
    sync.observe(Evaluation, cr)  # as the kopf adapter's watch would

    # The workload writes progress before kopf adopts the edit: the CR keeps the edit.
    records.mutate(Evaluation, "acme", "e1", lambda e: setattr(e.status, "phase", "Running"))
    await sync.poll_once()
    cr = cluster.read(EVALUATIONS, "acme", "e1")
    assert cr["spec"]["inference"]["topK"] == 3
    assert cr["status"]["observedGeneration"] == 0 and len(applies(cluster)) == 1

    assert adopt(records, Evaluation, cr) == "updated"
    record = records.get(Evaluation, "acme", "e1")
    assert record.spec.inference.top_k == 3 and record.metadata.generation == 2
    assert record.metadata.annotations[CR_GENERATION] == "2"
    assert adopt(records, Evaluation, cr) == "unchanged"
    await sync.poll_once()
    assert len(applies(cluster)) == 1  # the spec is the CR's now: never pushed back


async def test_a_records_new_spec_is_pushed_not_undone_by_adoption(
    cluster: Cluster, records: RecordStore
) -> None:
    records.create(factories.evaluation("e1"))
    sync = make_sync(cluster, records)
    await sync.poll_once()
    old_cr = cluster.read(EVALUATIONS, "acme", "e1")

    # The shim restarts the failed evaluation with a new spec.
    records.mutate(Evaluation, "acme", "e1", lambda e: setattr(e.status, "phase", "Failed"))
    again = factories.evaluation("e1")
    again.spec.inference.top_k = 7
    restarted, outcome = records.create(again)
    assert outcome == "restarted"
    assert adopt(records, Evaluation, old_cr) == "pending"  # kopf ran first: no harm
    assert records.get(Evaluation, "acme", "e1").spec.inference.top_k == 7

    await sync.poll_once()
    cr = cluster.read(EVALUATIONS, "acme", "e1")
    assert cr["spec"]["inference"]["topK"] == 7
    assert cr["metadata"]["annotations"][RECORD_REF] == f"{restarted.metadata.uid}/2"
    assert adopt(records, Evaluation, cr) == "unchanged"


class FlakyApi(KubeApi):
    """Fails every apply after the first `budget`, as a controller dying mid-sync would
    leave things."""

    def __init__(self, host: str, budget: int) -> None:
        super().__init__(host=host)
        self.budget = budget
        self.lock = threading.Lock()  # pushes run in a thread pool

    def apply(self, path: str, body: dict[str, Any], manager: str = "dyff") -> dict[str, Any]:
        with self.lock:
            if self.budget <= 0:
                raise ApiError(503, "ServiceUnavailable", "the controller is going down")
            self.budget -= 1
        return super().apply(path, body, manager)


async def test_restart_mid_sync_loses_nothing_and_duplicates_nothing(
    cluster: Cluster, records: RecordStore
) -> None:
    for i in range(24):
        records.create(factories.model(f"m{i}", account=("acme", "globex", "initech")[i % 3]))
    first = make_sync(cluster, records, FlakyApi(cluster.api_url, budget=10))
    await first.list_crs()
    await first.poll_once()
    assert len(cluster.items(MODELS)) == 10
    first.close()  # gone, with its retries

    second = make_sync(cluster, records)
    await second.list_crs()
    before = len(applies(cluster))
    await second.poll_once()
    crs = cluster.items(MODELS)
    assert sorted((c["metadata"]["namespace"], c["metadata"]["name"]) for c in crs) == sorted(
        (m.account, m.name) for m in records.scan(Model)
    )
    assert len(applies(cluster)) - before == 14  # only the missing ones
    assert await second.poll_once() == 0


async def test_an_older_version_never_overwrites_a_newer_one(
    cluster: Cluster, records: RecordStore
) -> None:
    records.create(factories.model("m1"))
    sync = make_sync(cluster, records)
    await sync.poll_once()
    older = records.mutate(Model, "acme", "m1", lambda m: setattr(m.status, "phase", "Packaging"))
    newer = records.mutate(Model, "acme", "m1", lambda m: setattr(m.status, "phase", "Ready"))
    await sync.push(newer)
    await sync.push(older)  # e.g. a slower reader, later
    assert cluster.read(MODELS, "acme", "m1")["status"]["phase"] == "Ready"


async def test_a_record_marked_deleting_deletes_its_cr_and_is_finalized(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    fake = FakeWorkloads(records, blobs)
    controller = Controller(records, blobs, fake, KubeApi(host=cluster.api_url))
    records.create(factories.model("m1"))
    report(records, blobs, ("Model", "acme", "m1"), "ingest_model")
    await controller.sync.poll_once()
    assert cluster.read(MODELS, "acme", "m1")["status"]["phase"] == "Ready"

    records.mutate(
        Model, "acme", "m1", lambda m: setattr(m.metadata, "deletion_timestamp", utcnow())
    )
    await controller.sync.poll_once()
    # The CR was born with kopf's finalizer: it stays, deleting, until kopf (not running
    # here; test_kopf runs it) lifts the finalizer.
    cr = cluster.read(MODELS, "acme", "m1")
    assert cr["metadata"]["deletionTimestamp"] and cr["metadata"]["finalizers"] == [FINALIZER]
    assert records.find(Model, "acme", "m1") is None
    assert list(blobs.list("accounts/")) == []
    assert fake.stopped == [("Model", "acme", "m1")]
    controller.close()


def test_a_cr_with_an_invalid_spec_gets_no_record(records: RecordStore) -> None:
    from pydantic import ValidationError

    body = {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "m1", "namespace": "acme", "generation": 1},
        "spec": {"source": {"form": "image", "uri": {"uri": "gs://b/x", "sha256": "0" * 64}}},
    }
    with pytest.raises(ValidationError):
        adopt(records, Model, body)
    assert records.find(Model, "acme", "m1") is None


def _cr(name: str, annotations: dict[str, str], labels: dict[str, str] | None = None) -> Any:
    return {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Model",
        "metadata": {
            "name": name,
            "namespace": "acme",
            "generation": 1,
            "annotations": annotations,
            "labels": labels or {},
        },
        "spec": {
            "source": {"form": "transformers", "uri": {"uri": "gs://b/m", "sha256": "0" * 64}}
        },
    }


@pytest.mark.parametrize(
    ("annotations", "labels", "owner"),
    [
        ({}, {}, "its custom resource in the cluster (kubectl or GitOps)"),
        (
            {"argocd.argoproj.io/tracking-id": "team-a:dyff.io/Model:acme/m1"},
            {},
            "Argo CD application team-a",
        ),
        ({}, {"app.kubernetes.io/instance": "team-b"}, "Argo CD application team-b"),
        ({RECORD_REF: "uid/1"}, {}, None),  # a CR dyff made from a record
    ],
)
def test_a_cr_dyff_did_not_make_gives_a_record_owned_by_git(
    records: RecordStore, annotations: dict[str, str], labels: dict[str, str], owner: str | None
) -> None:
    assert adopt(records, Model, _cr("m1", annotations, labels)) == "created"
    meta = records.get(Model, "acme", "m1").metadata
    assert meta.annotations.get(GIT_SOURCE) == owner
    assert meta.annotations.get(MANAGED_BY) == (GITOPS if owner else None)


def test_git_takes_over_a_record_made_through_the_api(records: RecordStore) -> None:
    """A shim-made entity whose CR Argo CD starts tracking (moved into Git) becomes
    Git's, spec unchanged; the CR carries no dyff-private annotation back."""
    assert adopt(records, Model, _cr("m1", {RECORD_REF: "uid/1"})) == "created"
    tracked = {RECORD_REF: "uid/1", "argocd.argoproj.io/tracking-id": "app:dyff.io/Model:acme/m1"}
    assert adopt(records, Model, _cr("m1", tracked)) == "updated"
    record = records.get(Model, "acme", "m1")
    assert record.metadata.annotations[GIT_SOURCE] == "Argo CD application app"
    assert MANAGED_BY not in cr_manifest(record)["metadata"]["annotations"]
    assert adopt(records, Model, _cr("m1", tracked)) == "unchanged"


async def test_a_namespace_deleted_behind_the_syncs_back_is_made_again(
    cluster: Cluster, records: RecordStore
) -> None:
    """The sync remembers the namespaces it made; one an admin deleted since makes the
    next CR apply a 404, and the sync makes the namespace again instead of failing on."""
    import kmock

    records.create(factories.evaluation("e1", account="globex"))
    sync = make_sync(cluster, records)
    assert await sync.poll_once() == 1
    cluster.objects[(kmock.resource("v1/namespaces"), None, "globex")].delete()
    assert not cluster.read("v1/namespaces", None, "globex")
    records.create(factories.evaluation("e2", account="globex"))
    assert await sync.poll_once() == 1
    assert cluster.read("v1/namespaces", None, "globex")
    assert cluster.read(EVALUATIONS, "globex", "e2") is not None


async def test_the_cr_is_born_with_the_finalizer_and_every_apply_keeps_it(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    """The controller's sync applies kopf's finalizer with the spec: kopf need not PATCH
    it in (one request and one watch event less per CR). Server-side apply drops what an
    apply of ours set before and a later one leaves out, so every apply names it."""
    controller = Controller(
        records, blobs, FakeWorkloads(records, blobs), KubeApi(host=cluster.api_url)
    )
    records.create(factories.evaluation("e1"))
    await controller.sync.poll_once()
    cr = cluster.read(EVALUATIONS, "acme", "e1")
    assert cr["metadata"]["finalizers"] == [FINALIZER]
    assert [r.method for r in cluster if r.method == "PATCH"] == ["PATCH"]  # the apply

    # The record's own spec changes (a restart through the HTTP API): applied again.
    records.mutate(Evaluation, "acme", "e1", lambda e: setattr(e.spec.inference, "top_k", 3))
    await controller.sync.poll_once()
    cr = cluster.read(EVALUATIONS, "acme", "e1")
    assert cr["spec"]["inference"]["topK"] == 3
    assert cr["metadata"]["finalizers"] == [FINALIZER]
    assert len(applies(cluster)) == 2
    controller.close()

    # A sync given no finalizer (the tests' bare sync) applies none.
    records.create(factories.evaluation("e2"))
    await make_sync(cluster, records).poll_once()
    assert "finalizers" not in cluster.read(EVALUATIONS, "acme", "e2")["metadata"]
