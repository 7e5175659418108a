"""One reconcile pass for one object, shared by every driver: observe the world, let the
kind decide, apply its actions, write its status.

`KINDS` is the registry: each kind's `Reconciler` (controller/reconcilers/<kind>.py)
with its lifecycle (`dyff.lifecycle`), `observe` and `decide`. A pass knows no kind by
name.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from controller.cleanup import cleanup
from controller.executors import Executor, WorkKey
from controller.kube import ApiError
from controller.reconcilers import dataset, evaluation, model
from controller.reconcilers.common import (
    Cleanup,
    Outcome,
    Reconciler,
    Release,
    StartWork,
    StopWork,
    Stores,
)
from dyff.accounts import finish_account_deletion
from dyff.errors import Conflict, NotFound, WorkloadFailed
from dyff.lifecycle import settle
from dyff.schema import Entity
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

log = logging.getLogger("dyff.controller")

# The kinds the controller reconciles, in dependency order (iterating gives the types).
KINDS: dict[type[Entity], Reconciler[Any, Any]] = {
    r.kind: r for r in (model.RECONCILER, dataset.RECONCILER, evaluation.RECONCILER)
}


@dataclass
class Result:
    outcome: Outcome | None  # None: the object is gone
    wrote_status: bool = False
    finalized: bool = False


def reconcile_one(
    records: RecordStore,
    blobs: BlobStore,
    executor: Executor,
    kind: type[Entity],
    account: str,
    name: str,
) -> Result:
    """Reconcile the record (kind, account, name) once."""
    reconciler = KINDS[kind]
    key: WorkKey = (kind.kind_name, account, name)
    # Work first, record second: a workload that has exited has written its report,
    # so the record read next shows it.
    work = executor.state(key)
    entity = records.find(kind, account, name)
    if entity is None:
        executor.stop(key)  # its record is gone: nothing may keep running for it
        return Result(None)
    world = reconciler.observe(Stores(records, blobs), executor, work, entity)
    outcome = reconciler.decide(entity, world)
    for action in outcome.actions:
        if isinstance(action, StopWork):
            executor.stop(key)
        elif isinstance(action, StartWork):
            refused = start_work(executor, key, action)
            if refused is not None:
                outcome = refused_outcome(reconciler, outcome, refused, action.generation)
        elif isinstance(action, Cleanup):
            deleted = cleanup(records, blobs, entity)
            log.info("deleted %d blobs of %s %s/%s", deleted, kind.kind_name, account, name)
        elif isinstance(action, Release):
            with contextlib.suppress(NotFound):
                records.delete(kind, account, name)
            # The last entity of a deleted account takes the account's records with it.
            finish_account_deletion(records, account)
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


# A start the platform refused and may accept later (quota, a namespace being made
# again, a conflict): the entity says why and the pass comes back after this long.
START_RETRY_S = 30.0


@dataclass(frozen=True)
class Refused:
    permanent: bool
    reason: str
    message: str


def start_work(executor: Executor, key: WorkKey, action: StartWork) -> Refused | None:
    """Start the work; a refusal becomes the entity's status, not a retry loop that
    leaves its status unchanged. Anything unforeseen propagates (the driver retries)."""
    try:
        executor.start(key, action.workload, action.generation)
    except WorkloadFailed as exc:  # the executor found the input unusable
        return Refused(True, exc.reason, str(exc))
    except ApiError as exc:
        log.warning("starting %s for %s %s/%s: %s", action.workload, *key, exc)
        if exc.status in (400, 422):  # the API server will never take this workload
            return Refused(True, "WorkloadRejected", f"the cluster refused it: {exc.message}")
        if exc.status in (403, 404, 409, 429):  # quota, a namespace on its way, a race
            message = f"the cluster refused to start it for now: {exc.message}; retrying"
            return Refused(False, "WorkloadNotStarted", message)
        raise
    return None


def refused_outcome(
    reconciler: Reconciler[Any, Any], outcome: Outcome, refused: Refused, generation: int
) -> Outcome:
    life = reconciler.lifecycle
    phase = life.failed if refused.permanent else life.working
    settle(outcome.status, phase, "False", refused.reason, refused.message, generation)
    return Outcome(outcome.status, requeue_after=None if refused.permanent else START_RETRY_S)
