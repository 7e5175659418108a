"""The Evaluation lifecycle: Pending (waiting for its model and dataset; the reason says
which) -> Running (progress: shards done/total, reused) -> Complete | Failed (Deleting on
deletion); the phases and what they mean are `dyff.lifecycle.EVALUATION`.

A failed model or dataset fails the evaluation with reason FailedDependency.
Once both are Ready, their labels are matched (`dyff.labels.match_labels`)
before any work starts: a refused match fails the evaluation with reason
LabelMismatch (naming both label lists); a partial overlap sets the condition
LabelsPartiallyMatched (True, listing the unmatched names) and proceeds.
Evaluations already finished for their spec are left as they are.

The plan (shards in all, shards whose predictions are cached) is computed once per
generation, by `observe` from the model and dataset it has just read, and kept in
`status.progress` from the first Running pass on; the workload keeps its reused count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from controller.reconcilers.common import (
    NO_WORK,
    Outcome,
    Reconciler,
    StopWork,
    Stores,
    WorkState,
    deleting,
    drive_work,
    finished_for_generation,
)
from dyff.access import usable
from dyff.errors import DyffError
from dyff.labels import LABEL_MISMATCH, LABELS_PARTIALLY_MATCHED, match_labels
from dyff.lifecycle import DATASET, EVALUATION, MODEL, settle
from dyff.lifecycle import EvaluationPhase as Phase
from dyff.schema import Account, Dataset, Evaluation, EvaluationStatus, Model, Progress

if TYPE_CHECKING:
    from controller.executors import Executor
    from dyff.stores.blobs import BlobStore
    from dyff.stores.records import RecordStore


@dataclass(frozen=True)
class EvaluationWorld:
    model: Model | None = None
    dataset: Dataset | None = None
    work: WorkState = NO_WORK
    # The plan for the current generation, when observe computed one: shards in all and
    # shards reused, as status.progress shows them.
    planned: Progress | None = None


def plan_shown(evaluation: Evaluation) -> bool:
    """The status already shows a plan, written for the current generation."""
    status = evaluation.status
    return (
        status.progress is not None and status.observed_generation == evaluation.metadata.generation
    )


def _plan(
    blobs: BlobStore, evaluation: Evaluation, model: Model | None, dataset: Dataset | None
) -> Progress | None:
    """The plan, from the model and dataset already read, when the status lacks one for
    this generation and the evaluation may run (both Ready, not finished)."""
    if (
        model is None
        or dataset is None
        or model.metadata.deletion_timestamp is not None
        or dataset.metadata.deletion_timestamp is not None
        or model.status.phase != MODEL.succeeded
        or dataset.status.phase != DATASET.succeeded
        or plan_shown(evaluation)
        or finished_for_generation(evaluation, EVALUATION)
    ):
        return None
    from dyff.evaluation import plan_progress  # polars/pyarrow (~65 MB): only once needed

    try:
        return plan_progress(blobs, evaluation, model, dataset)
    except DyffError:  # refused labels, no digest yet: decide (or the workload) says so
        return None


def observe(
    stores: Stores, executor: Executor, work: WorkState, evaluation: Evaluation
) -> EvaluationWorld:
    """The model and dataset (one read for both; another account's only while public),
    and the plan when one is due."""
    spec, account = evaluation.spec, evaluation.account
    model, dataset = stores.records.find_many(
        [
            (Model, spec.model.account or account, spec.model.name),
            (Dataset, spec.dataset.account or account, spec.dataset.name),
        ]
    )
    assert model is None or isinstance(model, Model)
    assert dataset is None or isinstance(dataset, Dataset)
    if not usable(model, account):
        model = None
    if not usable(dataset, account):
        dataset = None
    planned = _plan(stores.blobs, evaluation, model, dataset)
    return EvaluationWorld(model, dataset, work, planned)


def waiting_for(
    records: RecordStore, kind: type[Model] | type[Dataset], account: str, name: str
) -> list[tuple[str, str]]:
    """(account, name) of the evaluations waiting for this Model or Dataset, to wake when
    it settles: of its own account, and of every account while it is public."""
    entity = records.find(kind, account, name)
    if entity is None:
        return []
    readers = [account]
    if entity.spec.public:
        readers = sorted({a.name for a in records.scan(Account)} | {account})
    field = "model" if kind is Model else "dataset"
    found = []
    for reader in readers:
        for phase in sorted(EVALUATION.waiting):
            for evaluation in records.list_all(Evaluation, reader, phase=phase):
                ref = getattr(evaluation.spec, field)
                if ref.name == name and (ref.account or reader) == account:
                    found.append((reader, evaluation.name))
    return found


def _waiting(
    evaluation: Evaluation, status: EvaluationStatus, reason: str, message: str
) -> Outcome:
    settle(status, Phase.PENDING, "False", reason, message, evaluation.metadata.generation)
    return Outcome(status, requeue_after=2.0)


def decide(evaluation: Evaluation, world: EvaluationWorld) -> Outcome:
    gone = deleting(evaluation, EVALUATION)
    if gone is not None:
        return gone
    status = evaluation.status.model_copy(deep=True)
    spec = evaluation.spec
    generation = evaluation.metadata.generation
    deps = (
        ("model", spec.model.name, world.model, MODEL),
        ("dataset", spec.dataset.name, world.dataset, DATASET),
    )
    for kind, name, dep, _ in deps:
        if dep is None or dep.metadata.deletion_timestamp is not None:
            return _waiting(
                evaluation, status, f"{kind.capitalize()}NotFound", f"{kind} {name!r} not found"
            )
    for kind, name, dep, life in deps:
        assert dep is not None
        if dep.status.phase == life.failed:
            why = dep.status.message or "failed"
            settle(
                status,
                Phase.FAILED,
                "False",
                "FailedDependency",
                f"{kind} {name!r} failed: {why}",
                generation,
            )
            return Outcome(status)
    for kind, name, dep, life in deps:
        assert dep is not None
        if dep.status.phase != life.succeeded:
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
    if (
        match is not None
        and not match.allowed
        and not finished_for_generation(evaluation, EVALUATION)
    ):
        settle(status, Phase.FAILED, "False", LABEL_MISMATCH, match.message, generation)
        return Outcome(status, [StopWork()] if world.work.phase != "none" else [])
    if match is not None and match.partial:
        status.set_condition(
            LABELS_PARTIALLY_MATCHED, "True", "PartialOverlap", match.partial_message(), generation
        )
    elif status.condition(LABELS_PARTIALLY_MATCHED) is not None:
        status.conditions = [c for c in status.conditions if c.type != LABELS_PARTIALLY_MATCHED]
    outcome = drive_work(evaluation, world.work, "evaluate", EVALUATION, status)
    # Show the plan as soon as it is known, before the workload reports progress; a new
    # generation's plan replaces the old generation's progress.
    if world.planned is not None and status.phase == Phase.RUNNING and not plan_shown(evaluation):
        status.progress = world.planned.model_copy()
    return outcome


RECONCILER = Reconciler(Evaluation, EVALUATION, observe, decide)
