"""The Evaluation lifecycle: Pending (waiting for its model and dataset; the reason says
which) -> Running (progress: shards done/total, reused) -> Complete | Failed.

A failed model or dataset fails the evaluation with reason FailedDependency.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.reconcilers.common import (
    NO_WORK,
    Outcome,
    WorkState,
    deleting,
    drive_work,
    settle,
)
from dyff.schema import Dataset, Evaluation, EvaluationStatus, Model, Progress


@dataclass(frozen=True)
class Plan:
    """Which shards already have predictions (reused) and which must be inferred."""

    shards_total: int
    shards_reused: int


@dataclass(frozen=True)
class EvaluationWorld:
    model: Model | None = None
    dataset: Dataset | None = None
    work: WorkState = NO_WORK
    plan: Plan | None = None


def _waiting(
    evaluation: Evaluation, status: EvaluationStatus, reason: str, message: str
) -> Outcome:
    settle(evaluation, status, "Pending", "False", reason, message)
    return Outcome(status, requeue_after=2.0)


def reconcile_evaluation(evaluation: Evaluation, world: EvaluationWorld) -> Outcome:
    gone = deleting(evaluation, world.work)
    if gone is not None:
        return gone
    status = evaluation.status.model_copy(deep=True)
    spec = evaluation.spec
    deps = (("model", spec.model.name, world.model), ("dataset", spec.dataset.name, world.dataset))
    for kind, name, dep in deps:
        if dep is None or dep.metadata.deletion_timestamp is not None:
            return _waiting(
                evaluation, status, f"{kind.capitalize()}NotFound", f"{kind} {name!r} not found"
            )
    for kind, name, dep in deps:
        assert dep is not None
        if dep.status.phase == "Failed":
            why = dep.status.message or "failed"
            settle(
                evaluation,
                status,
                "Failed",
                "False",
                "FailedDependency",
                f"{kind} {name!r} failed: {why}",
            )
            return Outcome(status)
    for kind, name, dep in deps:
        assert dep is not None
        if dep.status.phase != "Ready":
            return _waiting(
                evaluation,
                status,
                f"WaitingFor{kind.capitalize()}",
                f"waiting for {kind} {name!r} ({dep.status.phase or 'new'})",
            )
    outcome = drive_work(evaluation, world.work, "evaluate", "Running", ("Complete",), status)
    # Show the plan as soon as the dataset is known, before the workload reports progress.
    if world.plan is not None and status.phase == "Running" and status.progress is None:
        status.progress = Progress(
            shards_total=world.plan.shards_total, shards_reused=world.plan.shards_reused
        )
    return outcome
