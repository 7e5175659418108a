"""The reconcilers as plain functions: tables of states, and idempotence."""

from __future__ import annotations

from typing import Any

import pytest

from controller.reconcilers.common import (
    Cleanup,
    Outcome,
    Release,
    StartWork,
    StopWork,
    WorkState,
)
from controller.reconcilers.dataset import DatasetWorld
from controller.reconcilers.dataset import decide as decide_dataset
from controller.reconcilers.evaluation import EvaluationWorld
from controller.reconcilers.evaluation import decide as decide_evaluation
from controller.reconcilers.model import ModelWorld
from controller.reconcilers.model import decide as decide_model
from dyff.schema import (
    Dataset,
    Entity,
    ImageSource,
    LabelMapping,
    Model,
    ModelSource,
    ObjectMeta,
    Progress,
    UriSource,
    utcnow,
)
from tests import factories

RUNNING = WorkState("running", 1)
CRASHED = WorkState("failed", 1, "exit 1; Traceback ...")
SERVER_FAILED = WorkState("failed", 1, "container model-server: ErrImagePull", "ModelServerFailed")
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
    outcome = decide_model(factories.model(), world)
    assert outcome.status.phase == phase
    assert ready_reason(outcome) == reason
    assert actions(outcome) == acts
    assert outcome.status.observed_generation == 1


def test_model_reported_ready_is_left_alone() -> None:
    model = reported(factories.model(), "Ready", reason="Packaged")
    model.status.digest = "d" * 64
    outcome = decide_model(model, ModelWorld(True, EXITED))
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
    ok = decide_model(model, ModelWorld(runs_containers=True))
    assert ok.status.phase == "Ready" and ok.status.digest == digest and ok.actions == []
    assert ok.status.user_code, "an image runs its owner's code: served isolated"
    refused = decide_model(model, ModelWorld(runs_containers=False))
    assert refused.status.phase == "Failed"
    assert ready_reason(refused) == "ContainerRuntimeUnavailable"


def test_uri_models_need_no_upload() -> None:
    model = factories.model()
    model.spec.source = ModelSource(
        form="transformers", uri=UriSource(uri="gs://b/m", sha256="0" * 64)
    )
    outcome = decide_model(model, ModelWorld(upload_present=False))
    assert actions(outcome) == [StartWork]


def test_work_for_an_older_generation_is_stopped_first() -> None:
    model = factories.model()
    model.metadata.generation = 2
    outcome = decide_model(model, ModelWorld(True, WorkState("running", 1)))
    assert actions(outcome) == [StopWork]
    again = decide_model(model, ModelWorld(True))
    assert [a.generation for a in again.actions if isinstance(a, StartWork)] == [2]


def test_deleting_stops_work_cleans_up_then_finalizes() -> None:
    for entity in (factories.model(), factories.dataset(), factories.evaluation()):
        entity.metadata.deletion_timestamp = utcnow()
        if isinstance(entity, Model):
            outcome = decide_model(entity, ModelWorld(True, RUNNING))
        elif isinstance(entity, Dataset):
            outcome = decide_dataset(entity, DatasetWorld(True, RUNNING))
        else:
            outcome = decide_evaluation(entity, EvaluationWorld(work=RUNNING))
        assert actions(outcome) == [StopWork, Cleanup, Release]
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
    outcome = decide_dataset(factories.dataset(), world)
    assert (outcome.status.phase, ready_reason(outcome), actions(outcome)) == (phase, reason, acts)


def test_dataset_failed_by_its_workload_stays_failed() -> None:
    dataset = reported(factories.dataset(), "Failed", "False", "CorruptImage")
    outcome = decide_dataset(dataset, DatasetWorld(True, EXITED))
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
        "its model server cannot start: the executor's reason",
        EvaluationWorld(ready_model(), ready_dataset(), SERVER_FAILED),
        "Failed",
        "ModelServerFailed",
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
    outcome = decide_evaluation(factories.evaluation(), world)
    assert (outcome.status.phase, ready_reason(outcome), actions(outcome)) == (phase, reason, acts)
    if reason in ("ModelNotFound", "WaitingForModel", "FailedDependency") and "model" in case:
        assert "model 'm1'" in (outcome.status.message or "")


def test_label_mismatch_names_both_label_sets_and_starts_nothing() -> None:
    world = EvaluationWorld(ready_model(DEFAULTS), ready_dataset(DIGITS))
    outcome = decide_evaluation(factories.evaluation(), world)
    ready = outcome.status.condition("Ready")
    assert ready is not None and (ready.status, ready.reason) == ("False", "LabelMismatch")
    assert "'LABEL_0'" in ready.message and "'0'" in ready.message
    assert outcome.status.message == ready.message and outcome.actions == []


def test_a_label_mapping_lets_it_run() -> None:
    evaluation = factories.evaluation()
    evaluation.spec.label_mapping = LabelMapping(by_index=True)
    outcome = decide_evaluation(
        evaluation, EvaluationWorld(ready_model(DEFAULTS), ready_dataset(DIGITS))
    )
    assert outcome.status.phase == "Running" and actions(outcome) == [StartWork]
    evaluation.spec.label_mapping = LabelMapping(map={"LABEL_0": "nope"})
    refused = decide_evaluation(
        evaluation, EvaluationWorld(ready_model(DEFAULTS), ready_dataset(DIGITS))
    )
    assert refused.status.phase == "Failed" and ready_reason(refused) == "LabelMismatch"
    assert "'nope'" in (refused.status.message or "")


def test_partial_overlap_is_a_condition_listing_the_unmatched_names() -> None:
    evaluation = factories.evaluation()
    world = EvaluationWorld(ready_model(["0", "1", "cat"]), ready_dataset(["0", "1", "2"]))
    outcome = decide_evaluation(evaluation, world)
    partial = outcome.status.condition("LabelsPartiallyMatched")
    assert partial is not None and partial.status == "True"
    assert "'cat'" in partial.message and "'2'" in partial.message
    # Exact labels: no such condition (and an old one goes away).
    evaluation.status = outcome.status
    exact = decide_evaluation(
        evaluation, EvaluationWorld(ready_model(["0", "1", "2"]), ready_dataset(["0", "1", "2"]))
    )
    assert exact.status.condition("LabelsPartiallyMatched") is None


def test_a_finished_evaluation_is_not_failed_for_its_labels_afterwards() -> None:
    evaluation = reported(factories.evaluation(), "Complete")
    world = EvaluationWorld(ready_model(DEFAULTS), ready_dataset(DIGITS), EXITED)
    outcome = decide_evaluation(evaluation, world)
    assert outcome.status.phase == "Complete" and outcome.actions == []


def test_evaluation_shows_its_plan_before_progress() -> None:
    world = EvaluationWorld(
        ready_model(), ready_dataset(), planned=Progress(shards_total=10, shards_reused=7)
    )
    outcome = decide_evaluation(factories.evaluation(), world)
    progress = outcome.status.progress  # type: ignore[attr-defined]
    assert progress.shards_total == 10 and progress.shards_reused == 7


def test_complete_evaluation_is_left_alone_until_its_spec_changes() -> None:
    evaluation = reported(factories.evaluation(), "Complete")
    world = EvaluationWorld(ready_model(), ready_dataset(), EXITED)
    assert decide_evaluation(evaluation, world).actions == []
    evaluation.metadata.generation = 2  # e.g. new metrics
    rerun = decide_evaluation(evaluation, world)
    assert actions(rerun) == [StopWork]
    rerun2 = decide_evaluation(
        apply(evaluation, rerun), EvaluationWorld(ready_model(), ready_dataset())
    )
    assert actions(rerun2) == [StartWork] and rerun2.status.phase == "Running"


# ------------------------------------------------------------ idempotence

CASES = (
    [(decide_model, factories.model, w) for _, w, *_ in MODEL_TABLE]
    + [(decide_dataset, factories.dataset, w) for _, w, *_ in DATASET_TABLE]
    + [(decide_evaluation, factories.evaluation, w) for _, w, *_ in EVAL_TABLE]
)


@pytest.mark.parametrize(("decide", "make", "world"), CASES)
def test_a_second_run_on_the_same_state_changes_nothing(decide: Any, make: Any, world: Any) -> None:
    entity = make()
    first = decide(entity, world)
    entity.status = first.status
    # The actions were applied: the world now shows the work they started.
    started = [a for a in first.actions if isinstance(a, StartWork)]
    if started:
        world = type(world)(**{**world.__dict__, "work": WorkState("running", 1)})
    second = decide(entity, world)
    assert second.status == first.status
    assert second.actions == []


def test_conditions_keep_their_transition_time_when_nothing_changes() -> None:
    entity = factories.evaluation()
    world = EvaluationWorld(ready_model(), ready_dataset(), RUNNING)
    first = decide_evaluation(entity, world)
    entity.status = first.status
    second = decide_evaluation(entity, world)
    t1 = first.status.condition("Ready").last_transition_time  # type: ignore[union-attr]
    t2 = second.status.condition("Ready").last_transition_time  # type: ignore[union-attr]
    assert t1 == t2


def test_a_new_generation_shows_its_own_plan() -> None:
    """The plan is kept for its generation: a later one replaces it, the same one never."""
    evaluation = factories.evaluation()
    world = EvaluationWorld(
        ready_model(), ready_dataset(), planned=Progress(shards_total=10, shards_reused=7)
    )
    first = decide_evaluation(evaluation, world)
    apply(evaluation, first)
    again = EvaluationWorld(
        ready_model(), ready_dataset(), RUNNING, Progress(shards_total=10, shards_reused=9)
    )
    assert decide_evaluation(evaluation, again).status.progress == world.planned  # type: ignore[attr-defined]
    evaluation.metadata.generation = 2
    rerun = decide_evaluation(evaluation, again)
    assert actions(rerun) == [StopWork] and rerun.status.progress == again.planned  # type: ignore[attr-defined]


# ----------------------------------------------------- observe and the registry


def test_the_registry_holds_every_kind_with_its_lifecycle() -> None:
    from controller.reconcile import KINDS
    from dyff.lifecycle import lifecycle
    from dyff.schema import RESOURCE_TYPES

    assert list(KINDS) == list(RESOURCE_TYPES)
    for kind, reconciler in KINDS.items():
        life = lifecycle(kind.kind_name)
        assert reconciler.kind is kind
        assert reconciler.lifecycle is life is kind.status_type.lifecycle


def _settled(phase: str, **fields: Any) -> Any:
    def change(entity: Any) -> None:
        reported(entity, phase)
        for name, value in fields.items():
            setattr(entity.status, name, value)

    return change


def test_observe_reads_model_and_dataset_once_and_plans_once_per_generation(
    records: Any, blobs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.reconcilers import evaluation as reconciler
    from controller.reconcilers.common import NO_WORK, Stores
    from dyff import evaluation as planning
    from dyff.schema import Evaluation, Shard

    shards = [Shard(sha256=f"{i:064x}", rows=5, first_row=5 * i) for i in range(3)]
    records.create(factories.model())
    model = records.mutate(Model, "acme", "m1", _settled("Ready", digest="ab" * 32, labels=["a"]))
    records.create(factories.dataset())
    dataset = records.mutate(Dataset, "acme", "d1", _settled("Ready", labels=["a"], rows=15))
    dataset = records.mutate(
        Dataset, "acme", "d1", lambda d: factories.list_shards(blobs, d, shards)
    )
    records.create(factories.evaluation())
    evaluation = records.get(Evaluation, "acme", "e1")
    # One shard's predictions are cached already.
    cached = planning.inputs_for(evaluation, model, dataset, shards).prediction_key(shards[1])
    blobs.put(cached, b"predictions")

    reads: list[str] = []
    for name in ("find", "get", "find_many", "list_all"):
        real = getattr(records, name)

        def counted(*args: Any, _name: str = name, _real: Any = real, **kwargs: Any) -> Any:
            reads.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(records, name, counted)
    stores = Stores(records, blobs)
    world = reconciler.observe(stores, None, NO_WORK, evaluation)  # type: ignore[arg-type]
    assert reads == ["find_many"]  # the model and the dataset, in one read
    # The reused shard's predictions are there already: done from the start.
    assert world.planned == Progress(shards_total=3, shards_reused=1, shards_done=1, rows=5)
    first = reconciler.decide(evaluation, world)
    assert first.status.phase == "Running" and first.status.progress == world.planned  # type: ignore[attr-defined]
    apply(evaluation, first)

    plans: list[Any] = []

    def plan_progress(*args: Any) -> Progress:
        plans.append(args)
        return Progress(shards_total=3, shards_reused=3)

    monkeypatch.setattr(planning, "plan_progress", plan_progress)
    # Shown for this generation: not planned again, whatever the pass.
    assert reconciler.observe(stores, None, RUNNING, evaluation).planned is None  # type: ignore[arg-type]
    assert plans == []
    # A new spec: planned again (from the same reads), and shown instead of the old plan.
    evaluation.metadata.generation = 2
    world = reconciler.observe(stores, None, RUNNING, evaluation)  # type: ignore[arg-type]
    assert len(plans) == 1 and plans[0][2:] == (world.model, world.dataset)
    assert reconciler.decide(evaluation, world).status.progress == Progress(  # type: ignore[attr-defined]
        shards_total=3, shards_reused=3
    )
    # Finished for its spec: nothing to plan.
    reported(evaluation, "Complete")
    assert reconciler.observe(stores, None, NO_WORK, evaluation).planned is None  # type: ignore[arg-type]
    assert len(plans) == 1


def test_observe_hides_private_dependencies_of_other_accounts(records: Any, blobs: Any) -> None:
    from controller.reconcilers import evaluation as reconciler
    from controller.reconcilers.common import NO_WORK, Stores

    records.create(factories.model(account="other"))
    records.create(factories.dataset(account="other"))
    evaluation = factories.evaluation()
    evaluation.spec.model.account = evaluation.spec.dataset.account = "other"
    world = reconciler.observe(Stores(records, blobs), None, NO_WORK, evaluation)  # type: ignore[arg-type]
    assert world.model is None and world.dataset is None and world.planned is None
    outcome = reconciler.decide(evaluation, world)
    assert outcome.status.phase == "Pending" and ready_reason(outcome) == "ModelNotFound"


def test_the_local_driver_runs_every_kind_of_the_registry(records: Any, blobs: Any) -> None:
    """`dyff up`'s loop: uploads land, the workloads report, the evaluation completes; a
    deleted evaluation is cleaned up and its record goes."""
    from controller.local import LocalDriver
    from dyff import layout
    from dyff.schema import Evaluation
    from tests.controller.conftest import FakeWorkloads

    executor = FakeWorkloads(records, blobs)
    driver = LocalDriver(records, blobs, executor)
    records.create(factories.model())
    records.create(factories.dataset())
    records.create(factories.evaluation())
    driver.reconcile_all()
    assert records.get(Model, "acme", "m1").status.phase == "WaitingForUpload"
    assert records.get(Evaluation, "acme", "e1").status.phase == "Pending"
    for kind in ("Model", "Dataset"):
        blobs.put(layout.upload_key("acme", kind, f"{kind[0].lower()}1", factories.SHA), b"0" * 10)
    for _ in range(4):
        driver.reconcile_all()
    done = records.get(Evaluation, "acme", "e1")
    assert done.status.phase == "Complete"
    assert [(key[0], workload) for key, workload, _ in executor.started] == [
        ("Model", "ingest_model"),
        ("Dataset", "ingest_dataset"),
        ("Evaluation", "evaluate"),
    ]
    records.mutate(
        Evaluation, "acme", "e1", lambda e: setattr(e.metadata, "deletion_timestamp", utcnow())
    )
    driver.reconcile_all()
    assert records.find(Evaluation, "acme", "e1") is None
