"""One reconcile pass (`controller.reconcile.reconcile_one`) when the platform refuses to
start the work: the entity's status says why — Failed for a refusal that will not change
(an invalid Job, an unusable input), its working phase with a retry for one that may (a
quota, a namespace on its way) — instead of an exception that leaves the status as it was
while the driver retries forever."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.executors import WorkKey
from controller.kube import ApiError
from controller.reconcile import START_RETRY_S, reconcile_one
from controller.reconcilers.common import Workload, WorkState
from dyff.errors import WorkloadFailed
from dyff.schema import Model, UriSource
from dyff.stores.file import FileBlobStore
from dyff.stores.records import RecordStore
from tests import factories


class RefusingExecutor:
    runs_containers = True

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.attempts = 0

    def state(self, key: WorkKey) -> WorkState:
        return WorkState()

    def start(self, key: WorkKey, workload: Workload, generation: int) -> None:
        self.attempts += 1
        raise self.error

    def stop(self, key: WorkKey) -> None:
        pass

    def work_keys(self) -> list[WorkKey]:
        return []

    def close(self) -> None:
        pass


def a_model(records: RecordStore) -> None:
    model = factories.model("m1")
    source = UriSource(uri="local:///accounts/acme/m.tar", sha256="0" * 64)
    model.spec.source = model.spec.source.model_copy(update={"upload": None, "uri": source})
    records.create(model)


@pytest.mark.parametrize(
    ("error", "phase", "reason", "words", "retry"),
    [
        (
            ApiError(422, "Invalid", 'Job.batch "x" is invalid: spec.template: bad'),
            "Failed",
            "WorkloadRejected",
            "is invalid",
            None,
        ),
        (
            ApiError(403, "Forbidden", 'exceeded quota: compute, requested: cpu=2"'),
            "Packaging",
            "WorkloadNotStarted",
            "exceeded quota",
            START_RETRY_S,
        ),
        (
            ApiError(404, "NotFound", 'namespaces "acme" not found'),
            "Packaging",
            "WorkloadNotStarted",
            "not found",
            START_RETRY_S,
        ),
        (
            WorkloadFailed("InvalidImage", "image 'x' is not a valid reference"),
            "Failed",
            "InvalidImage",
            "not a valid reference",
            None,
        ),
    ],
    ids=["invalid-job", "quota", "namespace-gone", "unusable-input"],
)
def test_a_refused_start_says_why_in_the_status(
    record_store: RecordStore,
    tmp_path: Path,
    error: Exception,
    phase: str,
    reason: str,
    words: str,
    retry: float | None,
) -> None:
    a_model(record_store)
    executor = RefusingExecutor(error)
    blobs = FileBlobStore(tmp_path / "blobs")
    result = reconcile_one(record_store, blobs, executor, Model, "acme", "m1")
    assert executor.attempts == 1 and result.wrote_status
    assert result.outcome is not None and result.outcome.requeue_after == retry
    status = record_store.get(Model, "acme", "m1").status
    ready = status.condition("Ready")
    assert status.phase == phase and ready is not None
    assert (ready.status, ready.reason) == ("False", reason)
    assert words in ready.message


def test_an_unforeseen_error_still_propagates(record_store: RecordStore, tmp_path: Path) -> None:
    """A bug or a network error is not the entity's fault: the driver retries it."""
    a_model(record_store)
    executor = RefusingExecutor(ConnectionResetError("peer reset"))
    with pytest.raises(ConnectionResetError):
        reconcile_one(record_store, FileBlobStore(tmp_path / "b"), executor, Model, "acme", "m1")
    assert record_store.get(Model, "acme", "m1").status.phase is None
