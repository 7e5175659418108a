"""One reconcile pass for one object, shared by every driver: observe the world,
call the kind's reconciler, apply its actions, write its status."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from controller.cleanup import cleanup
from controller.executors import Executor, WorkKey
from controller.reconcilers.common import (
    Cleanup,
    Finalize,
    Outcome,
    StartWork,
    StopWork,
    WorkState,
)
from controller.reconcilers.dataset import DatasetWorld, reconcile_dataset
from controller.reconcilers.evaluation import EvaluationWorld, Plan, reconcile_evaluation
from dyff import uploads
from dyff.errors import Conflict, DyffError, NotFound
from dyff.schema import Dataset, Entity, Evaluation, Model
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

log = logging.getLogger("dyff.controller")
KINDS: tuple[type[Entity], ...] = (Model, Dataset, Evaluation)


@dataclass
class Result:
    outcome: Outcome | None  # None: the object is gone
    wrote_status: bool = False
    finalized: bool = False


def _plan(records: RecordStore, blobs: BlobStore, evaluation: Evaluation) -> Plan | None:
    """Shards reused vs. to infer, shown as soon as the model and dataset are ready."""
    from dyff.evaluation import plan  # polars/pyarrow (~65 MB): only once a plan is needed

    try:
        found = plan(records, blobs, evaluation)
    except DyffError:  # a dependency changed under us: the next pass sees it
        return None
    return Plan(shards_total=found.shards_total, shards_reused=found.reused)


def observe_and_reconcile(
    records: RecordStore, blobs: BlobStore, executor: Executor, entity: Entity, work: WorkState
) -> Outcome:
    if isinstance(entity, Model):
        from controller.reconcilers.model import ModelWorld, reconcile_model

        world = ModelWorld(uploads.upload_present(blobs, entity), work, executor.runs_containers)
        return reconcile_model(entity, world)
    if isinstance(entity, Dataset):
        return reconcile_dataset(entity, DatasetWorld(uploads.upload_present(blobs, entity), work))
    assert isinstance(entity, Evaluation)
    spec = entity.spec
    found = records.find_many(
        [
            (Model, spec.model.account or entity.account, spec.model.name),
            (Dataset, spec.dataset.account or entity.account, spec.dataset.name),
        ]
    )
    model, dataset = found
    assert model is None or isinstance(model, Model)
    assert dataset is None or isinstance(dataset, Dataset)
    # Another account's entity may be used only while it is public.
    if model is not None and model.account != entity.account and not model.spec.public:
        model = None
    if dataset is not None and dataset.account != entity.account and not dataset.spec.public:
        dataset = None
    work_plan = None
    if (
        model is not None
        and dataset is not None
        and model.status.phase == "Ready"
        and dataset.status.phase == "Ready"
        and entity.status.progress is None
    ):
        work_plan = _plan(records, blobs, entity)
    return reconcile_evaluation(entity, EvaluationWorld(model, dataset, work, work_plan))


def reconcile_one(
    records: RecordStore,
    blobs: BlobStore,
    executor: Executor,
    kind: type[Entity],
    account: str,
    name: str,
) -> Result:
    """Reconcile the record (kind, account, name) once."""
    key: WorkKey = (kind.kind_name, account, name)
    # Work first, record second: a workload that has exited has written its report,
    # so the record read next shows it.
    work = executor.state(key)
    entity = records.find(kind, account, name)
    if entity is None:
        executor.stop(key)  # its record is gone: nothing may keep running for it
        return Result(None)
    outcome = observe_and_reconcile(records, blobs, executor, entity, work)
    for action in outcome.actions:
        if isinstance(action, StopWork):
            executor.stop(key)
        elif isinstance(action, StartWork):
            executor.start(key, action.workload, action.generation)
        elif isinstance(action, Cleanup):
            deleted = cleanup(records, blobs, entity)
            log.info("deleted %d blobs of %s %s/%s", deleted, kind.kind_name, account, name)
        elif isinstance(action, Finalize):
            with contextlib.suppress(NotFound):
                records.delete(kind, account, name)
            return Result(outcome, finalized=True)
    if outcome.status.wire() == entity.status.wire():
        return Result(outcome)
    entity.status = outcome.status
    try:
        records.update(entity)
    except (Conflict, NotFound):
        # Someone (a workload reporting) wrote since we read: the next pass sees it.
        return Result(outcome)
    return Result(outcome, wrote_status=True)
