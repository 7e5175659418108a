"""What every reconciler shares: the observed state of its work, actions, outcomes.

A reconciler is a plain function of (object, observed world) -> Outcome: the
status the object should have and the actions that bring the world closer to
its spec. It does no I/O, so running it twice on the same state gives the same
answer; drivers (the kopf adapter, the local loop) gather the observations,
apply the actions and write the status.

Workloads report their own outcome (phase Ready/Complete/Failed with the
Ready condition and observedGeneration) through the record store; reconcilers
decide everything else: waiting, starting and stopping work, crashes,
dependencies, deletion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dyff.schema import Dataset, Entity, Model, Status

WorkPhase = Literal["none", "running", "succeeded", "failed"]
Workload = Literal["ingest_model", "ingest_dataset", "evaluate"]


@dataclass(frozen=True)
class WorkState:
    """What the executor reports about an object's workload."""

    phase: WorkPhase = "none"
    generation: int = 0  # the object generation the work was started for
    message: str = ""

    @property
    def active(self) -> bool:
        return self.phase == "running"


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
class Finalize:
    """Cleanup is done: let the object go."""


Action = StartWork | StopWork | Cleanup | Finalize


@dataclass
class Outcome:
    status: Status
    actions: list[Action] = field(default_factory=list)
    requeue_after: float | None = None  # seconds; for states that only time changes


def settle(
    entity: Entity,
    status: Status,
    phase: str,
    ready: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
) -> Status:
    """Set phase, Ready and observedGeneration for the object's current generation."""
    generation = entity.metadata.generation
    status.phase = phase
    status.message = message or None
    status.observed_generation = generation
    status.set_condition("Ready", ready, reason, message, generation)
    return status


def finished_for_generation(entity: Entity, phases: tuple[str, ...]) -> bool:
    """The workload already reported a final phase for the object's current spec."""
    status = entity.status
    ready = status.condition("Ready")
    return (
        status.phase in phases
        and status.observed_generation == entity.metadata.generation
        and ready is not None
        and ready.observed_generation == entity.metadata.generation
    )


def deleting(entity: Entity, work: WorkState) -> Outcome | None:
    """Deletion: stop the work, delete the bytes, then let the object go."""
    if entity.metadata.deletion_timestamp is None:
        return None
    status: Status = entity.status.model_copy(deep=True)
    status.phase = "Deleting"
    status.set_condition(
        "Ready",
        "False",
        "Deleting",
        "deleting its work and stored data",
        entity.metadata.generation,
    )
    return Outcome(status, [StopWork(), Cleanup(), Finalize()])


def waiting_for_upload(
    entity: Model | Dataset, upload_present: bool, work: WorkState, status: Status
) -> Outcome | None:
    """An `upload` source whose bytes have not arrived: wait (unless it already finished,
    or work is under way)."""
    upload = entity.spec.source.upload
    if (
        upload is None
        or upload_present
        or work.phase != "none"
        or finished_for_generation(entity, ("Ready", "Failed"))
    ):
        return None
    settle(
        entity,
        status,
        "WaitingForUpload",
        "False",
        "WaitingForUpload",
        f"waiting for the upload of {upload.size_bytes} bytes",
    )
    return Outcome(status, requeue_after=2.0)


def drive_work(
    entity: Entity,
    work: WorkState,
    workload: Workload,
    working_phase: str,
    done_phases: tuple[str, ...],
    status: Status,
) -> Outcome:
    """The shared middle of every lifecycle: start the work for the current generation,
    wait for it, and turn a crash into Failed."""
    generation = entity.metadata.generation
    if finished_for_generation(entity, (*done_phases, "Failed")):
        # The workload reported; leave its status as it is, and finished work alone.
        return Outcome(status)
    if work.phase != "none" and work.generation != generation:
        # Work for an older spec: stop it; the next pass starts the current one.
        settle(entity, status, working_phase, "False", working_phase, "restarting for a new spec")
        return Outcome(status, [StopWork()], requeue_after=1.0)
    if work.phase == "none":
        settle(entity, status, working_phase, "False", working_phase, f"{workload} started")
        return Outcome(status, [StartWork(workload, generation)], requeue_after=2.0)
    if work.phase == "running":
        if status.phase != working_phase or status.observed_generation != generation:
            settle(entity, status, working_phase, "False", working_phase, f"{workload} running")
        return Outcome(status, requeue_after=2.0)
    if work.phase == "succeeded":
        # Exited cleanly without reporting: a bug, not the user's fault; say so.
        settle(
            entity,
            status,
            "Failed",
            "False",
            "WorkloadNoResult",
            f"{workload} finished without reporting a result",
        )
        return Outcome(status)
    detail = f": {work.message}" if work.message else ""
    settle(entity, status, "Failed", "False", "WorkloadCrashed", f"{workload} crashed{detail}")
    return Outcome(status)
