"""The Dataset lifecycle: WaitingForUpload -> Ingesting -> Ready | Failed (Deleting on
deletion); the phases and what they mean are `dyff.lifecycle.DATASET`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.reconcilers.common import (
    NO_WORK,
    Outcome,
    Reconciler,
    Stores,
    WorkState,
    deleting,
    drive_work,
    waiting_for_upload,
)
from dyff import uploads
from dyff.lifecycle import DATASET
from dyff.lifecycle import DatasetPhase as Phase
from dyff.schema import Dataset

if TYPE_CHECKING:
    from controller.executors import Executor


@dataclass(frozen=True)
class DatasetWorld:
    upload_present: bool = False
    work: WorkState = NO_WORK


def observe(stores: Stores, executor: Executor, work: WorkState, dataset: Dataset) -> DatasetWorld:
    return DatasetWorld(uploads.upload_present(stores.blobs, dataset), work)


def decide(dataset: Dataset, world: DatasetWorld) -> Outcome:
    gone = deleting(dataset, DATASET)
    if gone is not None:
        return gone
    status = dataset.status.model_copy(deep=True)
    waiting = waiting_for_upload(
        dataset, world.upload_present, world.work, DATASET, Phase.WAITING_FOR_UPLOAD, status
    )
    if waiting is not None:
        return waiting
    return drive_work(dataset, world.work, "ingest_dataset", DATASET, status)


RECONCILER = Reconciler(Dataset, DATASET, observe, decide)
