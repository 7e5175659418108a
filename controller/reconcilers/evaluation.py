"""The Evaluation lifecycle: Pending (waiting for its model and dataset; the reason says
which) -> Running (progress: shards done/total, reused) -> Complete | Failed.

A failed model or dataset fails the evaluation with reason FailedDependency.
Once both are Ready, their labels are matched (`dyff.labels.match_labels`)
before any work starts: a refused match fails the evaluation with reason
LabelMismatch (naming both label lists); a partial overlap sets the condition
LabelsPartiallyMatched (True, listing the unmatched names) and proceeds.
Evaluations already finished for their spec are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.reconcilers.common import (
    NO_WORK,
    Outcome,
    StopWork,
    WorkState,
    deleting,
    drive_work,
    finished_for_generation,
    settle,
)
from dyff.labels import LABEL_MISMATCH, LABELS_PARTIALLY_MATCHED, match_labels
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
    assert world.model is not None and world.dataset is not None
    labels = world.dataset.status.labels
    match = (
        None  # not known yet: the workload checks them
        if labels is None
        else match_labels(world.model.status.labels, labels, spec.label_mapping)
    )
    generation = evaluation.metadata.generation
    if (
        match is not None
        and not match.allowed
        and not finished_for_generation(evaluation, ("Complete", "Failed"))
    ):
        settle(evaluation, status, "Failed", "False", LABEL_MISMATCH, match.message)
        return Outcome(status, [StopWork()] if world.work.phase != "none" else [])
    if match is not None and match.partial:
        status.set_condition(
            LABELS_PARTIALLY_MATCHED, "True", "PartialOverlap", match.partial_message(), generation
        )
    elif status.condition(LABELS_PARTIALLY_MATCHED) is not None:
        status.conditions = [c for c in status.conditions if c.type != LABELS_PARTIALLY_MATCHED]
    outcome = drive_work(evaluation, world.work, "evaluate", "Running", ("Complete",), status)
    # Show the plan as soon as the dataset is known, before the workload reports progress.
    if world.plan is not None and status.phase == "Running" and status.progress is None:
        status.progress = Progress(
            shards_total=world.plan.shards_total, shards_reused=world.plan.shards_reused
        )
    return outcome
