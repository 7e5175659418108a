"""The reconcilers as plain functions: tables of states, and idempotence."""

from __future__ import annotations

from typing import Any

import pytest

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
from controller.reconcilers.model import ModelWorld, reconcile_model
from dyff.schema import (
    Dataset,
    Entity,
    ImageSource,
    LabelMapping,
    Model,
    ModelSource,
    ObjectMeta,
    UriSource,
    utcnow,
)
from tests import factories

RUNNING = WorkState("running", 1)
CRASHED = WorkState("failed", 1, "exit 1; Traceback ...")
EXITED = WorkState("succeeded", 1)


def reported(entity: Any, phase: str, ready: str = "True", reason: str = "Done") -> Any:
    """As a workload leaves it when it reports its outcome."""
    entity.status.phase = phase
    entity.status.observed_generation = entity.metadata.generation
    entity.status.set_condition("Ready", ready, reason, "", entity.metadata.generation)  # type: ignore[arg-type]
    return entity


def actions(outcome: Outcome) -> list[type]:
    return [type(a) for a in outcome.actions]


def apply(entity: Entity, outcome: Outcome) -> Entity:
    entity.status = outcome.status
    return entity


def ready_reason(outcome: Outcome) -> str:
    condition = outcome.status.condition("Ready")
    assert condition is not None
    return condition.reason


# ------------------------------------------------------------------ Model

MODEL_TABLE = [
    # (case, world, phase, Ready reason, actions)
    (
        "waits for its upload",
        ModelWorld(upload_present=False),
        "WaitingForUpload",
        "WaitingForUpload",
        [],
    ),
    (
        "starts packaging once uploaded",
        ModelWorld(upload_present=True),
        "Packaging",
        "Packaging",
        [StartWork],
    ),
    ("keeps packaging while running", ModelWorld(True, RUNNING), "Packaging", "Packaging", []),
    ("a crash fails it", ModelWorld(True, CRASHED), "Failed", "WorkloadCrashed", []),
    ("exit without a report fails it", ModelWorld(True, EXITED), "Failed", "WorkloadNoResult", []),
]


@pytest.mark.parametrize(
    ("case", "world", "phase", "reason", "acts"), MODEL_TABLE, ids=[c[0] for c in MODEL_TABLE]
)
def test_model_table(case: str, world: ModelWorld, phase: str, reason: str, acts: list) -> None:
    outcome = reconcile_model(factories.model(), world)
    assert outcome.status.phase == phase
    assert ready_reason(outcome) == reason
    assert actions(outcome) == acts
    assert outcome.status.observed_generation == 1


def test_model_reported_ready_is_left_alone() -> None:
    model = reported(factories.model(), "Ready", reason="Packaged")
    model.status.digest = "d" * 64
    outcome = reconcile_model(model, ModelWorld(True, EXITED))
    assert outcome.status == model.status and outcome.actions == []


def test_image_model_is_ready_where_containers_run_and_refused_elsewhere() -> None:
    digest = "ab" * 32
    model = Model(
        metadata=ObjectMeta(name="img", namespace="acme"),
        spec={
            "source": ModelSource(
                form="image", image=ImageSource(reference=f"registry.example/m@sha256:{digest}")
            )
        },
    )
    ok = reconcile_model(model, ModelWorld(runs_containers=True))
    assert ok.status.phase == "Ready" and ok.status.digest == digest and ok.actions == []
    refused = reconcile_model(model, ModelWorld(runs_containers=False))
    assert refused.status.phase == "Failed"
    assert ready_reason(refused) == "ContainerRuntimeUnavailable"


def test_uri_models_need_no_upload() -> None:
    model = factories.model()
    model.spec.source = ModelSource(
        form="transformers", uri=UriSource(uri="gs://b/m", sha256="0" * 64)
    )
    outcome = reconcile_model(model, ModelWorld(upload_present=False))
    assert actions(outcome) == [StartWork]


def test_work_for_an_older_generation_is_stopped_first() -> None:
    model = factories.model()
    model.metadata.generation = 2
    outcome = reconcile_model(model, ModelWorld(True, WorkState("running", 1)))
    assert actions(outcome) == [StopWork]
    again = reconcile_model(model, ModelWorld(True))
    assert [a.generation for a in again.actions if isinstance(a, StartWork)] == [2]


def test_deleting_stops_work_cleans_up_then_finalizes() -> None:
    for entity in (factories.model(), factories.dataset(), factories.evaluation()):
        entity.metadata.deletion_timestamp = utcnow()
        if isinstance(entity, Model):
            outcome = reconcile_model(entity, ModelWorld(True, RUNNING))
        elif isinstance(entity, Dataset):
            outcome = reconcile_dataset(entity, DatasetWorld(True, RUNNING))
        else:
            outcome = reconcile_evaluation(entity, EvaluationWorld(work=RUNNING))
        assert actions(outcome) == [StopWork, Cleanup, Finalize]
        assert outcome.status.phase == "Deleting"


# ---------------------------------------------------------------- Dataset

DATASET_TABLE = [
    ("waits for its upload", DatasetWorld(False), "WaitingForUpload", "WaitingForUpload", []),
    ("starts ingesting", DatasetWorld(True), "Ingesting", "Ingesting", [StartWork]),
    ("keeps ingesting", DatasetWorld(True, RUNNING), "Ingesting", "Ingesting", []),
    ("a crash fails it", DatasetWorld(True, CRASHED), "Failed", "WorkloadCrashed", []),
]


@pytest.mark.parametrize(
    ("case", "world", "phase", "reason", "acts"), DATASET_TABLE, ids=[c[0] for c in DATASET_TABLE]
)
def test_dataset_table(case: str, world: DatasetWorld, phase: str, reason: str, acts: list) -> None:
    outcome = reconcile_dataset(factories.dataset(), world)
    assert (outcome.status.phase, ready_reason(outcome), actions(outcome)) == (phase, reason, acts)


def test_dataset_failed_by_its_workload_stays_failed() -> None:
    dataset = reported(factories.dataset(), "Failed", "False", "CorruptImage")
    outcome = reconcile_dataset(dataset, DatasetWorld(True, EXITED))
    assert outcome.status.phase == "Failed" and ready_reason(outcome) == "CorruptImage"
    assert outcome.actions == []


# ------------------------------------------------------------- Evaluation


def ready_model(labels: list[str] | None = None) -> Model:
    model = reported(factories.model("m1"), "Ready")
    model.status.labels = labels
    return model


def ready_dataset(labels: list[str] | None = None) -> Dataset:
    dataset = reported(factories.dataset("d1"), "Ready")
    dataset.status.labels = labels
    return dataset


DIGITS = [str(i) for i in range(10)]
DEFAULTS = [f"LABEL_{i}" for i in range(10)]


EVAL_TABLE = [
    ("no model", EvaluationWorld(None, ready_dataset()), "Pending", "ModelNotFound", []),
    ("no dataset", EvaluationWorld(ready_model(), None), "Pending", "DatasetNotFound", []),
    (
        "model not ready",
        EvaluationWorld(factories.model("m1"), ready_dataset()),
        "Pending",
        "WaitingForModel",
        [],
    ),
    (
        "dataset not ready",
        EvaluationWorld(ready_model(), factories.dataset("d1")),
        "Pending",
        "WaitingForDataset",
        [],
    ),
    (
        "failed model",
        EvaluationWorld(reported(factories.model("m1"), "Failed", "False", "X"), ready_dataset()),
        "Failed",
        "FailedDependency",
        [],
    ),
    (
        "failed dataset",
        EvaluationWorld(ready_model(), reported(factories.dataset("d1"), "Failed", "False", "X")),
        "Failed",
        "FailedDependency",
        [],
    ),
    (
        "both ready: run",
        EvaluationWorld(ready_model(), ready_dataset()),
        "Running",
        "Running",
        [StartWork],
    ),
    ("running", EvaluationWorld(ready_model(), ready_dataset(), RUNNING), "Running", "Running", []),
    (
        "crashed",
        EvaluationWorld(ready_model(), ready_dataset(), CRASHED),
        "Failed",
        "WorkloadCrashed",
        [],
    ),
    (
        "same labels: run",
        EvaluationWorld(ready_model(["b", "a"]), ready_dataset(["a", "b"])),
        "Running",
        "Running",
        [StartWork],
    ),
    (
        "transformers' default labels: refused",
        EvaluationWorld(ready_model(DEFAULTS), ready_dataset(DIGITS)),
        "Failed",
        "LabelMismatch",
        [],
    ),
    (
        "no label in common: refused",
        EvaluationWorld(ready_model(["cat", "dog"]), ready_dataset(DIGITS)),
        "Failed",
        "LabelMismatch",
        [],
    ),
    (
        "label mismatch stops running work",
        EvaluationWorld(ready_model(["cat", "dog"]), ready_dataset(DIGITS), RUNNING),
        "Failed",
        "LabelMismatch",
        [StopWork],
    ),
    (
        "partial overlap: run",
        EvaluationWorld(ready_model(["0", "1", "cat"]), ready_dataset(DIGITS)),
        "Running",
        "Running",
        [StartWork],
    ),
    (
        "labels not known yet: run, the workload checks",
        EvaluationWorld(ready_model(DEFAULTS), ready_dataset(None)),
        "Running",
        "Running",
        [StartWork],
    ),
]


@pytest.mark.parametrize(
    ("case", "world", "phase", "reason", "acts"), EVAL_TABLE, ids=[c[0] for c in EVAL_TABLE]
)
def test_evaluation_table(
    case: str, world: EvaluationWorld, phase: str, reason: str, acts: list
) -> None:
    outcome = reconcile_evaluation(factories.evaluation(), world)
    assert (outcome.status.phase, ready_reason(outcome), actions(outcome)) == (phase, reason, acts)
    if reason in ("ModelNotFound", "WaitingForModel", "FailedDependency") and "model" in case:
        assert "model 'm1'" in (outcome.status.message or "")


def test_label_mismatch_names_both_label_sets_and_starts_nothing() -> None:
    world = EvaluationWorld(ready_model(DEFAULTS), ready_dataset(DIGITS))
    outcome = reconcile_evaluation(factories.evaluation(), world)
    ready = outcome.status.condition("Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "LabelMismatch")
    assert "'LABEL_0'" in ready.message and "'0'" in ready.message
    assert outcome.status.message == ready.message and outcome.actions == []


def test_a_label_mapping_lets_it_run() -> None:
    evaluation = factories.evaluation()
    evaluation.spec.label_mapping = LabelMapping(by_index=True)
    outcome = reconcile_evaluation(
        evaluation, EvaluationWorld(ready_model(DEFAULTS), ready_dataset(DIGITS))
    )
    assert outcome.status.phase == "Running" and actions(outcome) == [StartWork]
    evaluation.spec.label_mapping = LabelMapping(map={"LABEL_0": "nope"})
    refused = reconcile_evaluation(
        evaluation, EvaluationWorld(ready_model(DEFAULTS), ready_dataset(DIGITS))
    )
    assert refused.status.phase == "Failed" and ready_reason(refused) == "LabelMismatch"
    assert "'nope'" in (refused.status.message or "")


def test_partial_overlap_is_a_condition_listing_the_unmatched_names() -> None:
    evaluation = factories.evaluation()
    world = EvaluationWorld(ready_model(["0", "1", "cat"]), ready_dataset(["0", "1", "2"]))
    outcome = reconcile_evaluation(evaluation, world)
    partial = outcome.status.condition("LabelsPartiallyMatched")
    assert partial is not None and partial.status == "True"
    assert "'cat'" in partial.message and "'2'" in partial.message
    # Exact labels: no such condition (and an old one goes away).
    evaluation.status = outcome.status
    exact = reconcile_evaluation(
        evaluation, EvaluationWorld(ready_model(["0", "1", "2"]), ready_dataset(["0", "1", "2"]))
    )
    assert exact.status.condition("LabelsPartiallyMatched") is None


def test_a_finished_evaluation_is_not_failed_for_its_labels_afterwards() -> None:
    evaluation = reported(factories.evaluation(), "Complete")
    world = EvaluationWorld(ready_model(DEFAULTS), ready_dataset(DIGITS), EXITED)
    outcome = reconcile_evaluation(evaluation, world)
    assert outcome.status.phase == "Complete" and outcome.actions == []


def test_evaluation_shows_its_plan_before_progress() -> None:
    world = EvaluationWorld(ready_model(), ready_dataset(), plan=Plan(10, 7))
    outcome = reconcile_evaluation(factories.evaluation(), world)
    progress = outcome.status.progress  # type: ignore[attr-defined]
    assert progress.shards_total == 10 and progress.shards_reused == 7


def test_complete_evaluation_is_left_alone_until_its_spec_changes() -> None:
    evaluation = reported(factories.evaluation(), "Complete")
    world = EvaluationWorld(ready_model(), ready_dataset(), EXITED)
    assert reconcile_evaluation(evaluation, world).actions == []
    evaluation.metadata.generation = 2  # e.g. new metrics
    rerun = reconcile_evaluation(evaluation, world)
    assert actions(rerun) == [StopWork]
    rerun2 = reconcile_evaluation(
        apply(evaluation, rerun), EvaluationWorld(ready_model(), ready_dataset())
    )
    assert actions(rerun2) == [StartWork] and rerun2.status.phase == "Running"


# ------------------------------------------------------------ idempotence

CASES = (
    [(reconcile_model, factories.model, w) for _, w, *_ in MODEL_TABLE]
    + [(reconcile_dataset, factories.dataset, w) for _, w, *_ in DATASET_TABLE]
    + [(reconcile_evaluation, factories.evaluation, w) for _, w, *_ in EVAL_TABLE]
)


@pytest.mark.parametrize(("reconcile", "make", "world"), CASES)
def test_a_second_run_on_the_same_state_changes_nothing(
    reconcile: Any, make: Any, world: Any
) -> None:
    entity = make()
    first = reconcile(entity, world)
    entity.status = first.status
    # The actions were applied: the world now shows the work they started.
    started = [a for a in first.actions if isinstance(a, StartWork)]
    if started:
        world = type(world)(**{**world.__dict__, "work": WorkState("running", 1)})
    second = reconcile(entity, world)
    assert second.status == first.status
    assert second.actions == []


def test_conditions_keep_their_transition_time_when_nothing_changes() -> None:
    entity = factories.evaluation()
    world = EvaluationWorld(ready_model(), ready_dataset(), RUNNING)
    first = reconcile_evaluation(entity, world)
    entity.status = first.status
    second = reconcile_evaluation(entity, world)
    t1 = first.status.condition("Ready").last_transition_time  # type: ignore[union-attr]
    t2 = second.status.condition("Ready").last_transition_time  # type: ignore[union-attr]
    assert t1 == t2
