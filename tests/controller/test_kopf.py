"""kopf running dyff's handlers against an emulated API server (kmock): the lifecycle of
each kind through its custom resource, deletion through finalizers, restarts, and both
directions of the record sync."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.executors.kubernetes import JobSettings, KubernetesExecutor
from controller.executors.manifests import LABEL_KIND, LABEL_NAME
from controller.kopf_adapter import DRAIN_S, FINALIZER, Controller
from controller.kube import KubeApi
from controller.sync import CR_GENERATION
from dyff import accounts, layout, uploads
from dyff.errors import Conflict
from dyff.schema import Dataset, Evaluation, Model, utcnow
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore
from tests import factories
from tests.controller.conftest import (
    DATASETS,
    EVALUATIONS,
    JOBS,
    MODELS,
    FakeWorkloads,
    create_namespace,
    eventually,
    kubectl_apply,
    kubectl_delete,
    kubectl_patch,
    operator,
    report,
)
from tests.controller.kmock_cluster import Cluster

SHA = "ab" * 32
ROOT = Path(__file__).resolve().parents[2]


def make_controller(
    cluster: Cluster,
    records: RecordStore,
    blobs: BlobStore,
    executor: Any,
    reconcile_interval: float = 0.3,
) -> Controller:
    return Controller(
        records,
        blobs,
        executor,
        KubeApi(host=cluster.api_url),
        reconcile_interval=reconcile_interval,
        sync_interval=0.05,
    )


def uri_model(name: str = "m1") -> dict[str, Any]:
    return {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name, "namespace": "acme"},
        "spec": {"source": {"form": "transformers", "uri": {"uri": "gs://b/m", "sha256": SHA}}},
    }


def uri_dataset(name: str = "d1") -> dict[str, Any]:
    return {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": "acme"},
        "spec": {"source": {"form": "parquet", "uri": {"uri": "gs://b/d", "sha256": SHA}}},
    }


def evaluation(name: str = "e1") -> dict[str, Any]:
    return {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Evaluation",
        "metadata": {"name": name, "namespace": "acme"},
        "spec": {"model": {"name": "m1"}, "dataset": {"name": "d1"}},
    }


def phase(cluster: Cluster, resource: str, name: str) -> str | None:
    cr = cluster.read(resource, "acme", name)
    return None if cr is None else (cr.get("status") or {}).get("phase")


def current(cluster: Cluster, resource: str, name: str, want: str) -> Any:
    """The CR once its status is `want` for its current generation."""
    cr = cluster.read(resource, "acme", name)
    if cr is None or (cr.get("status") or {}).get("phase") != want:
        return None
    status = cr["status"]
    assert status["observedGeneration"] == cr["metadata"]["generation"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["observedGeneration"] == cr["metadata"]["generation"]
    return cr


async def test_model_waits_for_its_upload_then_becomes_ready(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    fake = FakeWorkloads(records, blobs)
    model = factories.model("m1")
    async with operator(make_controller(cluster, records, blobs, fake), cluster):
        await kubectl_apply(cluster, model.wire())
        await eventually(lambda: phase(cluster, MODELS, "m1") == "WaitingForUpload")
        assert fake.started == []
        cr = cluster.read(MODELS, "acme", "m1")
        assert FINALIZER in cr["metadata"]["finalizers"]

        # The upload lands in the blob store: no event announces it, the timer sees it.
        upload = model.spec.source.upload
        assert upload is not None
        blobs.put(layout.upload_key("acme", "Model", "m1", upload.sha256), b"0123456789")
        cr = await eventually(lambda: current(cluster, MODELS, "m1", "Ready"))
    assert cr["status"]["digest"] == records.get(Model, "acme", "m1").status.digest
    assert [(k, w) for k, w, _ in fake.started] == [(("Model", "acme", "m1"), "ingest_model")]


@pytest.mark.parametrize("how", ["the shim's upload endpoint", "a signed URL, then done"])
async def test_an_upload_landing_wakes_its_model_at_once(
    cluster: Cluster, records: RecordStore, blobs: BlobStore, how: str
) -> None:
    """No timer runs within the test (60 s): the upload's ticket becoming Used is the event."""
    data = b"0123456789"
    model = factories.model("m1")
    assert model.spec.source.upload is not None
    model.spec.source.upload.sha256 = hashlib.sha256(data).hexdigest()
    fake = FakeWorkloads(records, blobs)
    controller = make_controller(cluster, records, blobs, fake, reconcile_interval=60)
    async with operator(controller, cluster):
        records.create(model)
        await eventually(lambda: phase(cluster, MODELS, "m1") == "WaitingForUpload")
        stored = records.get(Model, "acme", "m1")
        info = uploads.open_ticket(records, blobs, stored, "http://shim")
        assert info is not None and info.token is not None
        if how == "the shim's upload endpoint":
            uploads.receive(records, blobs, "acme", uploads.ticket_name(stored), info.token, [data])
        else:
            # A client's word alone is not enough: the bytes must be there.
            with pytest.raises(Conflict, match="no upload of the declared size"):
                uploads.announce_landed(records, blobs, stored)
            blobs.put(stored_key(stored), data)  # as Cloud Storage would, telling no one
            uploads.announce_landed(records, blobs, stored)
        started = time.monotonic()
        await eventually(lambda: current(cluster, MODELS, "m1", "Ready"), timeout=15)
    assert time.monotonic() - started < 15  # well before the 60 s timer
    assert [(k, w) for k, w, _ in fake.started] == [(("Model", "acme", "m1"), "ingest_model")]


async def test_a_public_model_settling_wakes_another_accounts_evaluation(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    fake = FakeWorkloads(records, blobs)
    controller = make_controller(cluster, records, blobs, fake, reconcile_interval=60)
    for name in ("acme", "bob"):
        accounts.create_account(records, name)
    await create_namespace(cluster, "bob")
    async with operator(controller, cluster):
        dataset = uri_dataset()
        dataset["metadata"]["namespace"] = "bob"
        await kubectl_apply(cluster, dataset)
        order = evaluation()
        order["metadata"]["namespace"] = "bob"
        order["spec"]["model"] = {"name": "m1", "account": "acme"}
        await kubectl_apply(cluster, order)

        def phase_of_bobs() -> str | None:
            cr = cluster.read(EVALUATIONS, "bob", "e1")
            return None if cr is None else (cr.get("status") or {}).get("phase")

        await eventually(lambda: phase_of_bobs() == "Pending")
        model = uri_model()
        model["spec"]["public"] = True
        await kubectl_apply(cluster, model)  # Ready at once; no timer runs (60 s)
        await eventually(lambda: phase_of_bobs() == "Complete", timeout=15)


def stored_key(entity: Model) -> str:
    assert entity.spec.source.upload is not None
    return layout.upload_key("acme", "Model", entity.name, entity.spec.source.upload.sha256)


async def test_evaluation_completes_with_metrics_in_its_status(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    fake = FakeWorkloads(records, blobs)
    # Timers too slow to matter here: every step follows from an event.
    controller = make_controller(cluster, records, blobs, fake, reconcile_interval=60)
    async with operator(controller, cluster):
        # The evaluation first: it waits for its model and dataset, and is woken when
        # they are Ready.
        await kubectl_apply(cluster, evaluation())
        await eventually(lambda: phase(cluster, EVALUATIONS, "e1") == "Pending")
        await kubectl_apply(cluster, uri_model())
        await kubectl_apply(cluster, uri_dataset())
        cr = await eventually(lambda: current(cluster, EVALUATIONS, "e1", "Complete"))
    assert cr["status"]["metrics"]["accuracy"] == 0.9
    assert cr["status"]["progress"]["shardsDone"] == 1
    assert cr["status"]["resultsUri"].startswith("local:///accounts/acme/")
    assert current(cluster, MODELS, "m1", "Ready") and current(cluster, DATASETS, "d1", "Ready")
    workloads = sorted(w for _, w, _ in fake.started)
    assert workloads == ["evaluate", "ingest_dataset", "ingest_model"]


async def test_cr_created_directly_becomes_a_record_and_follows_spec_changes(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    fake = FakeWorkloads(records, blobs, hold=("evaluate",))
    async with operator(make_controller(cluster, records, blobs, fake), cluster):
        for doc in (uri_model(), uri_dataset(), evaluation()):
            await kubectl_apply(cluster, doc)
        await eventually(lambda: phase(cluster, EVALUATIONS, "e1") == "Running")
        record = records.get(Evaluation, "acme", "e1")
        assert record.metadata.annotations[CR_GENERATION] == "1"
        assert record.spec.inference.top_k == 5

        # A GitOps commit changes the spec: the record follows, its generation bumps,
        # the old work stops and the new one runs to the end.
        path = "/apis/dyff.io/v1alpha1/namespaces/acme/evaluations/e1"
        await kubectl_patch(cluster, path, {"spec": {"inference": {"topK": 3}}})
        await eventually(lambda: records.get(Evaluation, "acme", "e1").spec.inference.top_k == 3)
        assert records.get(Evaluation, "acme", "e1").metadata.generation == 2
        await eventually(lambda: [g for k, w, g in fake.started if w == "evaluate"] == [1, 2])
        fake.finish(("Evaluation", "acme", "e1"))
        cr = await eventually(lambda: current(cluster, EVALUATIONS, "e1", "Complete"))
    assert cr["metadata"]["generation"] == 2
    assert ("Evaluation", "acme", "e1") in fake.stopped


async def test_record_created_through_the_store_appears_as_a_cr(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    fake = FakeWorkloads(records, blobs)
    async with operator(make_controller(cluster, records, blobs, fake), cluster):
        records.create(factories.evaluation("e1", account="globex"))
        cr = await eventually(lambda: cluster.read(EVALUATIONS, "globex", "e1"))
        assert cluster.read("v1/namespaces", None, "globex")["metadata"]["name"] == "globex"
        assert cr["spec"]["model"] == {"name": "m1"}
        # kopf took it over (finalizer) and its reconcile result came back as status.
        cr = await eventually(
            lambda: (
                (cluster.read(EVALUATIONS, "globex", "e1") or {}).get("status", {}).get("phase")
                == "Pending"
                and cluster.read(EVALUATIONS, "globex", "e1")
            )
        )
    assert FINALIZER in cr["metadata"]["finalizers"]
    assert cr["status"]["conditions"][0]["reason"] == "ModelNotFound"
    assert cr["status"]["observedGeneration"] == cr["metadata"]["generation"]


async def test_restart_mid_evaluation_finishes_without_running_it_twice(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    fake = FakeWorkloads(records, blobs, hold=("evaluate",))
    async with operator(make_controller(cluster, records, blobs, fake), cluster):
        for doc in (uri_model(), uri_dataset(), evaluation()):
            await kubectl_apply(cluster, doc)
        await eventually(lambda: phase(cluster, EVALUATIONS, "e1") == "Running")

    # The controller is down; the evaluation's Job (it outlives the controller) ends.
    fake.finish(("Evaluation", "acme", "e1"))
    assert phase(cluster, EVALUATIONS, "e1") == "Running"

    async with operator(make_controller(cluster, records, blobs, fake), cluster):
        cr = await eventually(lambda: current(cluster, EVALUATIONS, "e1", "Complete"))
    assert cr["status"]["metrics"]["macroF1"] == 0.85
    assert [w for _, w, _ in fake.started].count("evaluate") == 1


async def test_deletion_through_finalizers_leaves_no_blob_and_no_job(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    """The real Kubernetes executor: Jobs in the emulated cluster, each "run" by this
    test (it reports as the workload and marks the Job complete)."""
    api = KubeApi(host=cluster.api_url)
    settings = JobSettings(
        image="dyff-runtime:test",
        records_url=records.url,
        blobs_url=blobs.url,
        service_account_template=ROOT / "config/base/workload-serviceaccount.yaml",
    )
    executor = KubernetesExecutor(api, records, settings)
    done: set[str] = set()

    async def job_runner() -> None:
        while True:
            for job in cluster.items(JOBS):
                meta = job["metadata"]
                if meta["name"] in done or meta.get("deletionTimestamp"):
                    continue
                done.add(meta["name"])
                labels = meta["labels"]
                key = (labels[LABEL_KIND], meta["namespace"], labels[LABEL_NAME])
                workload = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
                await asyncio.to_thread(
                    report, records, blobs, key, workload.removeprefix("dyff.workloads.")
                )
                complete = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
                await cluster.set_status(JOBS, meta["namespace"], meta["name"], complete)
            await asyncio.sleep(0.05)

    runner = asyncio.create_task(job_runner())
    try:
        async with operator(make_controller(cluster, records, blobs, executor), cluster):
            for doc in (uri_model(), uri_dataset(), evaluation()):
                await kubectl_apply(cluster, doc)
            await eventually(lambda: current(cluster, EVALUATIONS, "e1", "Complete"))
            jobs = cluster.items(JOBS)
            assert len(jobs) == 3 and all(j["metadata"]["ownerReferences"] for j in jobs)
            assert cluster.read("v1/serviceaccounts", "acme", "dyff-workload") is not None
            assert any(b.key.startswith("accounts/acme/") for b in blobs.list("accounts/"))

            base = "/apis/dyff.io/v1alpha1/namespaces/acme"
            for plural, name in (("evaluations", "e1"), ("models", "m1"), ("datasets", "d1")):
                await kubectl_delete(cluster, f"{base}/{plural}/{name}")
            await eventually(
                lambda: all(cluster.read(r, "acme", n) is None for r, n in
                            ((EVALUATIONS, "e1"), (MODELS, "m1"), (DATASETS, "d1")))
            )  # fmt: skip
    finally:
        runner.cancel()
    job_watches = [r for r in cluster if r.params.get("watch") == "true" and r.resource
                   and r.resource.plural == "jobs"]  # fmt: skip
    assert job_watches
    assert all(
        r.params["labelSelector"] == "app.kubernetes.io/managed-by=dyff" for r in job_watches
    )
    for kind, name in ((Model, "m1"), (Dataset, "d1"), (Evaluation, "e1")):
        assert records.find(kind, "acme", name) is None
    assert list(blobs.list("accounts/")) == []
    assert cluster.items(JOBS) == []


async def test_record_marked_deleting_deletes_its_cr_and_is_finalized(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    fake = FakeWorkloads(records, blobs)
    async with operator(make_controller(cluster, records, blobs, fake), cluster):
        await kubectl_apply(cluster, uri_model())
        await eventually(lambda: current(cluster, MODELS, "m1", "Ready"))
        assert list(blobs.list("accounts/acme/bentos/"))

        # What the shim's DELETE does: mark the record; the controller does the rest.
        records.mutate(
            Model, "acme", "m1", lambda m: setattr(m.metadata, "deletion_timestamp", utcnow())
        )
        await eventually(lambda: cluster.read(MODELS, "acme", "m1") is None)
        await eventually(lambda: records.find(Model, "acme", "m1") is None)
    assert list(blobs.list("accounts/")) == []
    assert ("Model", "acme", "m1") in fake.stopped


class SlowStart(FakeWorkloads):
    """Workloads whose start takes seconds (a Job create over a slow API server)."""

    def __init__(self, records: RecordStore, blobs: BlobStore) -> None:
        super().__init__(records, blobs)
        self.in_flight = threading.Event()

    def start(self, key: Any, workload: Any, generation: int) -> None:
        self.in_flight.set()
        time.sleep(3)
        super().start(key, workload, generation)


async def test_stopping_drains_the_passes_in_flight_within_the_grace_period(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    """SIGTERM (the stop flag) while a pass is starting work: the pass finishes before
    the controller exits — and the exit still comes well inside the Pod's grace period."""
    slow = SlowStart(records, blobs)
    async with operator(make_controller(cluster, records, blobs, slow), cluster):
        await kubectl_apply(cluster, uri_model())
        assert await asyncio.to_thread(slow.in_flight.wait, 30)
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    assert [k for k, _, _ in slow.started] == [("Model", "acme", "m1")], "pass abandoned"
    assert records.get(Model, "acme", "m1").status.digest, "its report was not written"
    grace = yaml.safe_load_all((ROOT / "config/base/deployment.yaml").read_text())
    period = next(d for d in grace if d and d.get("kind") == "Deployment")["spec"]["template"][
        "spec"
    ]["terminationGracePeriodSeconds"]
    assert period > DRAIN_S and took < period, (took, DRAIN_S, period)


async def test_an_edit_that_changes_nothing_still_gets_its_generation_observed(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    """`public: false` written out is the default: the record does not change, but the
    CR's generation does, and its status must say it was observed within seconds (Argo
    CD shows Progressing until then), not at the next resync."""
    fake = FakeWorkloads(records, blobs)
    async with operator(make_controller(cluster, records, blobs, fake), cluster):
        await kubectl_apply(cluster, uri_model())
        await eventually(lambda: current(cluster, MODELS, "m1", "Ready"))
        path = "/apis/dyff.io/v1alpha1/namespaces/acme/models/m1"
        await kubectl_patch(cluster, path, {"spec": {"public": False}})
        cr = await eventually(lambda: current(cluster, MODELS, "m1", "Ready"), timeout=10)
        assert cr["metadata"]["generation"] == 2
    assert records.get(Model, "acme", "m1").metadata.generation == 1
    assert len(fake.started) == 1  # nothing ran again


async def test_a_cr_dyff_refuses_says_why_in_its_status(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    """A spec the API server let through but dyff refuses: no record, and the CR is
    Failed with the reason InvalidSpec naming the field (Argo CD: Degraded), instead of
    a status-less CR waiting forever."""
    fake = FakeWorkloads(records, blobs)
    bad = uri_model("bad")
    bad["spec"]["source"]["form"] = "image"  # an image form needs an image source
    async with operator(make_controller(cluster, records, blobs, fake), cluster):
        await kubectl_apply(cluster, bad)
        cr = await eventually(lambda: current(cluster, MODELS, "bad", "Failed"))
    ready = next(c for c in cr["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
    assert "spec.source" in ready["message"], ready
    assert "Traceback" not in ready["message"] and "pydantic" not in ready["message"]
    assert records.find(Model, "acme", "bad") is None and fake.started == []


async def test_a_cr_the_sync_creates_costs_kopf_no_patch_and_edits_still_reach_the_record(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    """kopf writes nothing to a CR born of a record: the finalizer came with the sync's
    apply, and the diff base (last handled essence) is kept in memory, not in an
    annotation. Each such PATCH was one more watch event for kopf (and the sync) to
    process per CR. A user's edit is still told from a status write."""
    fake = FakeWorkloads(records, blobs)
    async with operator(make_controller(cluster, records, blobs, fake), cluster):
        records.create(factories.evaluation("e1"))
        cr = await eventually(lambda: phase(cluster, EVALUATIONS, "e1") == "Pending")
        await asyncio.sleep(0.5)  # anything kopf would write after its handler
        cr = cluster.read(EVALUATIONS, "acme", "e1")
        assert cr["metadata"]["finalizers"] == [FINALIZER]
        assert not [k for k in cr["metadata"].get("annotations", {}) if k.startswith("kopf.")]
        writes = [
            r
            for r in cluster
            if r.method == "PATCH"
            and "/evaluations/e1" in str(r.url)
            and r.headers.get("Content-Type") != "application/apply-patch+yaml"
        ]
        assert writes == []

        # A status write is no change to handle, a spec edit is.
        path = "/apis/dyff.io/v1alpha1/namespaces/acme/evaluations/e1"
        await kubectl_patch(cluster, path, {"spec": {"inference": {"topK": 3}}})
        await eventually(lambda: records.get(Evaluation, "acme", "e1").spec.inference.top_k == 3)
        cr = await eventually(
            lambda: (
                (c := cluster.read(EVALUATIONS, "acme", "e1"))["status"]["observedGeneration"]
                == c["metadata"]["generation"]
                == 2
                and c
            )
        )
    assert cr["status"]["phase"] == "Pending"


def test_the_diff_base_is_kept_per_uid_until_the_cr_goes() -> None:
    import kopf

    from controller.kopf_adapter import MemoryDiffBase

    def body(uid: str, deleting: bool = False) -> kopf.Body:
        meta: dict[str, Any] = {"name": "e1", "namespace": "acme", "uid": uid}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return kopf.Body({"metadata": meta, "spec": {"x": 1}})

    base = MemoryDiffBase()
    essence = base.build(body=body("u1"))
    assert base.fetch(body=body("u1")) is None  # never handled here: a creation
    patch = kopf.Patch()
    base.store(body=body("u1"), patch=patch, essence=essence)
    assert not patch  # nothing is written to the CR
    assert base.fetch(body=body("u1")) == essence
    assert base.fetch(body=body("u2")) is None  # another incarnation of the name
    base.store(body=body("u2", deleting=True), patch=patch, essence=essence)
    assert base.fetch(body=body("u2")) is None and len(base) == 1
    base.forget("u1")  # its DELETED event
    assert len(base) == 0
