"""The Dataset lifecycle: WaitingForUpload -> Ingesting -> Ready | Failed."""

from __future__ import annotations

from dataclasses import dataclass

from controller.reconcilers.common import (
    NO_WORK,
    Outcome,
    WorkState,
    deleting,
    drive_work,
    waiting_for_upload,
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
    waiting = waiting_for_upload(dataset, world.upload_present, world.work, status)
    if waiting is not None:
        return waiting
    return drive_work(dataset, world.work, "ingest_dataset", "Ingesting", ("Ready",), status)
