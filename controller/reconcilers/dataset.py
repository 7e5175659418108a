"""The Dataset lifecycle: WaitingForUpload -> Ingesting -> Ready | Failed."""

from __future__ import annotations

from dataclasses import dataclass

from controller.reconcilers.common import (
    NO_WORK,
    Outcome,
    WorkState,
    deleting,
    drive_work,
    finished_for_generation,
    settle,
)
from dyff.schema import Dataset


@dataclass(frozen=True)
class DatasetWorld:
    upload_present: bool = False
    work: WorkState = NO_WORK


def reconcile_dataset(dataset: Dataset, world: DatasetWorld) -> Outcome:
    gone = deleting(dataset, world.work)
    if gone is not None:
        return gone
    status = dataset.status.model_copy(deep=True)
    source = dataset.spec.source
    if (
        source.upload is not None
        and not world.upload_present
        and world.work.phase == "none"
        and not finished_for_generation(dataset, ("Ready", "Failed"))
    ):
        settle(
            dataset,
            status,
            "WaitingForUpload",
            "False",
            "WaitingForUpload",
            f"waiting for the upload of {source.upload.size_bytes} bytes",
        )
        return Outcome(status, requeue_after=2.0)
    return drive_work(dataset, world.work, "ingest_dataset", "Ingesting", ("Ready",), status)
