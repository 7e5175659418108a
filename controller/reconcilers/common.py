"""What every reconciler shares: the observed state of its work, actions, outcomes, and
the registry entry each kind's module fills in.

Each kind's module (`model.py`, `dataset.py`, `evaluation.py`) holds its whole
lifecycle: its phases (`dyff.lifecycle`, shared with the workloads), `observe`
(stores, executor, work, object) -> World, which does all the reading, and the pure
`decide` (object, World) -> Outcome: the status the object should have and the actions
that bring the world closer to its spec. `decide` does no I/O, so running it twice on
the same state gives the same answer; drivers (the kopf adapter, the local loop) run
`controller.reconcile.reconcile_one`, which observes, decides, applies the actions and
writes the status.

Workloads report their own outcome (their kind's success or failure phase, with the
Ready condition and observedGeneration, through `dyff.lifecycle.settle`) in the record
store; reconcilers decide everything else: waiting, starting and stopping work,
crashes, dependencies, deletion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from dyff.lifecycle import Lifecycle, settle
from dyff.schema import Dataset, Entity, Model, Status

if TYPE_CHECKING:
    from controller.executors import Executor
    from dyff.stores.blobs import BlobStore
    from dyff.stores.records import RecordStore

WorkPhase = Literal["none", "running", "succeeded", "failed"]
Workload = Literal["ingest_model", "ingest_dataset", "evaluate"]


@dataclass(frozen=True)
class WorkState:
    """What the executor reports about an object's workload."""

    phase: WorkPhase = "none"
    generation: int = 0  # the object generation the work was started for
    message: str = ""
    reason: str = ""  # why it failed, when the executor can name it (e.g. ModelServerFailed)


NO_WORK = WorkState()


@dataclass(frozen=True)
class StartWork:
    workload: Workload
    generation: int


@dataclass(frozen=True)
class StopWork:
    """Stop any running work and forget finished work (a new generation starts afresh)."""


@dataclass(frozen=True)
class Cleanup:
    """Delete every stored byte the object owns (its uploads, packages, results, caches
    nothing else references)."""


@dataclass(frozen=True)
class Release:
    """Cleanup is done: let the object go (its record is deleted)."""


Action = StartWork | StopWork | Cleanup | Release


@dataclass
class Outcome:
    status: Status
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None  # seconds; for states that only time changes


@dataclass(frozen=True)
class Stores:
    """Where `observe` reads from."""

    records: RecordStore
    blobs: BlobStore


E = TypeVar("E", bound=Entity)
W = TypeVar("W")


@dataclass(frozen=True)
class Reconciler(Generic[E, W]):
    """One kind's entry in the registry (`controller.reconcile.KINDS`)."""

    kind: type[E]
    lifecycle: Lifecycle[Any]
    observe: Callable[[Stores, Executor, WorkState, E], W]
    decide: Callable[[E, W], Outcome]


def finished_for_generation(entity: Entity, life: Lifecycle[Any]) -> bool:
    """The workload (or the controller) already settled a final phase for the object's
    current spec."""
    status = entity.status
    ready = status.condition("Ready")
    return (
        life.is_final(status.phase)
        and status.observed_generation == entity.metadata.generation
        and ready is not None
        and ready.observed_generation == entity.metadata.generation
    )


def deleting(entity: Entity, life: Lifecycle[Any]) -> Outcome | None:
    """Deletion: stop the work, delete the bytes, then let the object go."""
    if entity.metadata.deletion_timestamp is None:
        return None
    status: Status = entity.status.model_copy(deep=True)
    status.phase = life.deleting
    status.set_condition(
        "Ready",
        "False",
        "Deleting",
        "deleting its work and stored data",
        entity.metadata.generation,
    )
    return Outcome(status, [StopWork(), Cleanup(), Release()])


def waiting_for_upload(
    entity: Model | Dataset,
    upload_present: bool,
    work: WorkState,
    life: Lifecycle[Any],
    phase: StrEnum,
    status: Status,
) -> Outcome | None:
    """An `upload` source whose bytes have not arrived: wait in `phase` (unless it already
    finished, or work is under way)."""
    upload = entity.spec.source.upload
    if (
        upload is None
        or upload_present
        or work.phase != "none"
        or finished_for_generation(entity, life)
    ):
        return None
    settle(
        status,
        phase,
        "False",
        phase,
        f"waiting for the upload of {upload.size_bytes} bytes",
        entity.metadata.generation,
    )
    return Outcome(status, requeue_after=2.0)


def drive_work(
    entity: Entity, work: WorkState, workload: Workload, life: Lifecycle[Any], status: Status
) -> Outcome:
    """The shared middle of every lifecycle: start the work for the current generation,
    wait for it, and turn a crash into the kind's failure phase."""
    generation = entity.metadata.generation
    working = life.working
    if finished_for_generation(entity, life):
        # The workload reported; leave its status as it is, and finished work alone.
        return Outcome(status)
    if work.phase != "none" and work.generation != generation:
        # Work for an older spec: stop it; the next pass starts the current one.
        settle(status, working, "False", working, "restarting for a new spec", generation)
        return Outcome(status, [StopWork()], requeue_after=1.0)
    if work.phase == "none":
        settle(status, working, "False", working, f"{workload} started", generation)
        return Outcome(status, [StartWork(workload, generation)], requeue_after=2.0)
    if work.phase == "running":
        if status.phase != working or status.observed_generation != generation:
            settle(status, working, "False", working, f"{workload} running", generation)
        return Outcome(status, requeue_after=2.0)
    if work.phase == "succeeded":
        # Exited cleanly without reporting: a bug, not the user's fault; say so.
        settle(
            status,
            life.failed,
            "False",
            "WorkloadNoResult",
            f"{workload} finished without reporting a result",
            generation,
        )
        return Outcome(status)
    if work.reason:  # the executor saw why (a model server that cannot start, ...)
        settle(status, life.failed, "False", work.reason, work.message, generation)
        return Outcome(status)
    detail = f": {work.message}" if work.message else ""
    settle(
        status, life.failed, "False", "WorkloadCrashed", f"{workload} crashed{detail}", generation
    )
    return Outcome(status)
