"""The phase registry (`dyff.lifecycle`): every phase of every kind classified, as the
controller treated them before the registry, and the one `settle` that reconcilers and
workloads share."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controller.reconcilers.common import WorkState
from controller.reconcilers.dataset import DatasetWorld
from controller.reconcilers.dataset import decide as decide_dataset
from controller.reconcilers.evaluation import EvaluationWorld
from controller.reconcilers.evaluation import decide as decide_evaluation
from dyff import lifecycle as lc
from dyff.schema import (
    RESOURCE_TYPES,
    Dataset,
    DatasetStatus,
    Entity,
    Evaluation,
    EvaluationStatus,
    ModelStatus,
    Status,
    UploadTicket,
)
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories

# kind -> phase -> (final, settled, waiting, restartable), as the code had them before the
# registry: final from kopf_adapter.FINAL_PHASES (no timer), settled from
# sync.SETTLED_PHASES (Ready, Failed; never for an Evaluation), waiting from
# kopf_adapter.WAITING_PHASES (Pending), restartable from schema.Entity.restartable_phases
# (Failed, for the three kinds).
TABLE: dict[str, dict[str, tuple[bool, bool, bool, bool]]] = {
    "Model": {
        "WaitingForUpload": (False, False, False, False),
        "Packaging": (False, False, False, False),
        "Ready": (True, True, False, False),
        "Failed": (True, True, False, True),
        "Deleting": (False, False, False, False),
    },
    "Dataset": {
        "WaitingForUpload": (False, False, False, False),
        "Ingesting": (False, False, False, False),
        "Ready": (True, True, False, False),
        "Failed": (True, True, False, True),
        "Deleting": (False, False, False, False),
    },
    "Evaluation": {
        "Pending": (False, False, True, False),
        "Running": (False, False, False, False),
        "Complete": (True, False, False, False),
        "Failed": (True, False, False, True),
        "Deleting": (False, False, False, False),
    },
}
# kind -> (working, succeeded, failed, deleting)
ROLES = {
    "Model": ("Packaging", "Ready", "Failed", "Deleting"),
    "Dataset": ("Ingesting", "Ready", "Failed", "Deleting"),
    "Evaluation": ("Running", "Complete", "Failed", "Deleting"),
}
CASES = [(kind, phase) for kind, phases in TABLE.items() for phase in phases]


def test_the_registry_holds_exactly_the_resource_kinds() -> None:
    assert list(lc.LIFECYCLES) == [t.kind_name for t in RESOURCE_TYPES] == list(TABLE)
    for kind, life in lc.LIFECYCLES.items():
        assert lc.lifecycle(kind) is life and life.kind == kind
    with pytest.raises(ValueError, match="no lifecycle"):
        lc.lifecycle("ApiKey")


@pytest.mark.parametrize("kind", list(TABLE))
def test_every_phase_of_a_kind_is_classified(kind: str) -> None:
    life = lc.lifecycle(kind)
    assert [p.value for p in life.phases] == list(TABLE[kind])
    assert life.values == set(TABLE[kind])
    assert (life.working, life.succeeded, life.failed, life.deleting) == ROLES[kind]


@pytest.mark.parametrize(("kind", "phase"), CASES, ids=[f"{k}-{p}" for k, p in CASES])
def test_phase_table(kind: str, phase: str) -> None:
    life = lc.lifecycle(kind)
    got = (
        life.is_final(phase),
        life.is_settled(phase),
        life.is_waiting(phase),
        phase in life.restartable,
    )
    assert got == TABLE[kind][phase]


@pytest.mark.parametrize("kind", list(TABLE))
def test_no_phase_is_in_no_class_but_the_working_ones(kind: str) -> None:
    life = lc.lifecycle(kind)
    assert life.is_final(None) is life.is_settled(None) is life.is_waiting(None) is False
    assert life.settled <= life.final and life.restartable <= life.final
    assert not life.waiting & life.final
    assert {life.succeeded, life.failed} == life.final
    assert life.working not in life.final | life.waiting


def test_a_lifecycle_refuses_phases_of_another_kind() -> None:
    with pytest.raises(ValueError, match="not of the kind"):
        lc.Lifecycle(
            kind="Model",
            phases=lc.ModelPhase,
            working=lc.ModelPhase.PACKAGING,
            succeeded=lc.ModelPhase.READY,
            failed=lc.ModelPhase.FAILED,
            deleting=lc.ModelPhase.DELETING,
            final=frozenset({lc.EvaluationPhase.COMPLETE}),  # type: ignore[arg-type]
            settled=frozenset(),
            waiting=frozenset(),
            restartable=frozenset(),
        )


@pytest.mark.parametrize("entity", RESOURCE_TYPES, ids=lambda t: t.kind_name)
def test_schema_takes_restartable_phases_and_phase_checks_from_the_registry(
    entity: type[Entity],
) -> None:
    life = lc.lifecycle(entity.kind_name)
    assert set(entity.restartable_phases) == set(life.restartable) == {"Failed"}
    assert entity.status_type.lifecycle is life
    for phase in life.phases:
        assert entity.status_type.model_validate({"phase": phase.value}).phase == phase
    with pytest.raises(ValidationError, match=f"not a {entity.kind_name} phase"):
        entity.status_type.model_validate({"phase": "Bogus"})


def test_records_of_other_kinds_keep_their_own_phases() -> None:
    assert UploadTicket.restartable_phases == ()
    assert Status.model_validate({"phase": "Claimed"}).phase == "Claimed"
    # A Model never waits in Pending; an Evaluation never is Ready.
    with pytest.raises(ValidationError):
        ModelStatus.model_validate({"phase": "Pending"})
    with pytest.raises(ValidationError):
        EvaluationStatus.model_validate({"phase": "Ready"})


def test_lifecycle_imports_nothing_of_dyff_at_run_time() -> None:
    """dyff.schema imports dyff.lifecycle: the arrow must not point back."""
    path = Path(lc.__file__)
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("dyff"), node.module
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("dyff") for a in node.names)


# ------------------------------------------------------------------ settle

OLD = datetime(2020, 1, 1, tzinfo=UTC)


def _with_ready(status: Any, ready: str, reason: str, generation: int) -> Any:
    status.set_condition("Ready", ready, reason, "before", generation)
    status.conditions[-1].last_transition_time = OLD
    return status


def test_settle_sets_phase_ready_and_observed_generation() -> None:
    status = _with_ready(DatasetStatus(phase="Ingesting"), "False", "Ingesting", 1)
    lc.settle(status, lc.DatasetPhase.FAILED, "False", "CorruptImage", "row 3", 2)
    ready = status.condition("Ready")
    assert ready is not None
    assert (status.phase, status.message, status.observed_generation) == ("Failed", "row 3", 2)
    assert (ready.status, ready.reason, ready.message, ready.observed_generation) == (
        "False",
        "CorruptImage",
        "row 3",
        2,
    )
    assert ready.last_transition_time == OLD  # the status stayed False
    lc.settle(status, lc.DatasetPhase.READY, "True", "Ingested", "10 rows", 2, summary=None)
    ready = status.condition("Ready")
    assert ready is not None and ready.status == "True" and ready.last_transition_time > OLD
    assert status.message is None  # a summary of None: no message
    assert [c.type for c in status.conditions] == ["Ready"]
    lc.settle(status, lc.DatasetPhase.READY, "True", "Ingested", "10 rows", 2, summary="10 rows")
    assert status.message == "10 rows"
    with pytest.raises(ValueError, match="not a Dataset phase"):
        lc.settle(status, "Complete", "True", "Done", "", 2)


@pytest.fixture
def records(tmp_path: Path) -> SqliteRecordStore:
    return SqliteRecordStore(tmp_path / "records.db")


def _ready_parts(status: Any) -> tuple[Any, ...]:
    ready = status.condition("Ready")
    return (
        status.phase,
        status.message,
        status.observed_generation,
        ready.status,
        ready.reason,
        ready.message,
        ready.last_transition_time,
        ready.observed_generation,
    )


def test_a_reconciler_and_an_ingest_workload_settle_alike(records: SqliteRecordStore) -> None:
    """The same failure written by the controller (a crash it saw) and by the workload
    (`dyff.workloads.common.report`) leaves the same phase, message, Ready condition and
    observedGeneration."""
    from dyff.workloads.common import report

    records.create(factories.dataset())

    def ingesting(d: Any) -> None:
        d.status.phase = "Ingesting"
        _with_ready(d.status, "False", "Ingesting", 1)

    dataset = records.mutate(Dataset, "acme", "d1", ingesting)
    message = "ingest_dataset crashed: exit 1"
    by_controller = decide_dataset(dataset, DatasetWorld(True, WorkState("failed", 1, "exit 1")))
    assert report(
        records, Dataset, "acme", "d1", 1,
        ready=False, reason="WorkloadCrashed", message=message,
        results={"rows": None, "shard_list": None, "labels": None},
    )  # fmt: skip
    by_workload = records.get(Dataset, "acme", "d1").status
    assert _ready_parts(by_controller.status) == _ready_parts(by_workload)
    assert _ready_parts(by_workload) == ("Failed", message, 1, "False", "WorkloadCrashed",
                                         message, OLD, 1)  # fmt: skip


def test_a_reconciler_and_the_evaluate_workload_settle_alike(records: SqliteRecordStore) -> None:
    from dyff.workloads.evaluate import set_status

    model, dataset = factories.model(), factories.dataset()
    for dep in (model, dataset):
        dep.status.phase = "Ready"
        dep.status.observed_generation = 1
        dep.status.set_condition("Ready", "True", "Done", "", 1)
    records.create(factories.evaluation())

    def running(e: Any) -> None:
        e.status.phase = "Running"
        _with_ready(e.status, "False", "Running", 1)

    evaluation = records.mutate(Evaluation, "acme", "e1", running)
    world = EvaluationWorld(model, dataset, WorkState("failed", 1, "exit 1"))
    by_controller = decide_evaluation(evaluation, world)
    message = "evaluate crashed: exit 1"
    set_status(
        records, "acme", "e1", phase=lc.EvaluationPhase.FAILED, generation=1,
        ready=("False", "WorkloadCrashed", message),
    )  # fmt: skip
    by_workload = records.get(Evaluation, "acme", "e1").status
    assert _ready_parts(by_controller.status) == _ready_parts(by_workload)
    assert _ready_parts(by_workload) == ("Failed", message, 1, "False", "WorkloadCrashed",
                                         message, OLD, 1)  # fmt: skip


def test_the_evaluate_workload_keeps_the_plan_of_its_generation(
    records: SqliteRecordStore,
) -> None:
    """shardsReused is the controller's plan for this generation; a plan left from an older
    generation is replaced by the workload's own count."""
    from dyff.schema import Progress
    from dyff.workloads.evaluate import set_status

    records.create(factories.evaluation())

    def planned(e: Any) -> None:
        e.status.phase = "Running"
        e.status.observed_generation = 1
        e.status.progress = Progress(shards_total=10, shards_reused=7)

    records.mutate(Evaluation, "acme", "e1", planned)
    mine = Progress(shards_total=10, shards_done=7, shards_reused=3)

    def reused() -> int:
        progress = records.get(Evaluation, "acme", "e1").status.progress
        assert progress is not None
        return progress.shards_reused

    set_status(records, "acme", "e1", phase=lc.EvaluationPhase.RUNNING, generation=1,
               progress=mine)  # fmt: skip
    assert reused() == 7
    # A new spec: the status still shows generation 1's plan.
    records.mutate(Evaluation, "acme", "e1", lambda e: setattr(e.spec.run, "batch_size", 8))
    assert records.get(Evaluation, "acme", "e1").metadata.generation == 2
    set_status(records, "acme", "e1", phase=lc.EvaluationPhase.RUNNING, generation=2,
               progress=mine, ready=("False", "Running", "3/10 shards reused"))  # fmt: skip
    assert reused() == 3
    assert records.get(Evaluation, "acme", "e1").status.observed_generation == 2
