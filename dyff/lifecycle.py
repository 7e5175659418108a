"""Each kind's phases, in one place, and the one `settle` that writes a phase.

A Model, Dataset or Evaluation moves through the phases of its `enum.StrEnum`; its
`Lifecycle` says how everyone treats them:

- `final`: nothing changes until the spec does (the kopf timer stops polling);
- `settled`: reaching one wakes what waits for this object (the record sync wakes the
  evaluations waiting for their model or dataset; nothing waits for an Evaluation);
- `waiting`: only another object's change ends it (a slow kopf timer);
- `restartable`: creating the same name again restarts the object (the record store);

and which phase is the kind's working, success, failure and deletion phase. The
reconcilers (`controller/reconcilers/<kind>.py`), the kopf adapter, the record sync,
the schema (phase validation, restartable phases) and the Argo CD health scripts
(`dyff.argocdgen`) all read these tables; nothing else lists phases.

`settle` sets phase, message, observedGeneration and the Ready condition together; the
reconcilers and the workloads (which report their own final phase) both call it.

This module imports nothing of dyff at run time, so `dyff.schema` can import it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from dyff.schema import ConditionStatus, Status


class ModelPhase(enum.StrEnum):
    WAITING_FOR_UPLOAD = "WaitingForUpload"
    PACKAGING = "Packaging"
    READY = "Ready"
    FAILED = "Failed"
    DELETING = "Deleting"


class DatasetPhase(enum.StrEnum):
    WAITING_FOR_UPLOAD = "WaitingForUpload"
    INGESTING = "Ingesting"
    READY = "Ready"
    FAILED = "Failed"
    DELETING = "Deleting"


class EvaluationPhase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    DELETING = "Deleting"


P = TypeVar("P", bound=enum.StrEnum)


@dataclass(frozen=True)
class Lifecycle(Generic[P]):
    """One kind's phases and what each means to the controller."""

    kind: str
    phases: type[P]
    working: P  # while its workload runs
    succeeded: P  # the workload's success
    failed: P
    deleting: P
    final: frozenset[P]
    settled: frozenset[P]
    waiting: frozenset[P]
    restartable: frozenset[P]
    values: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", frozenset(p.value for p in self.phases))
        for name in ("final", "settled", "waiting", "restartable"):
            extra = set(getattr(self, name)) - set(self.phases)
            if extra:
                raise ValueError(f"{self.kind} {name} phases not of the kind: {extra}")

    def check(self, phase: str) -> str:
        """`phase` if it is one of the kind's; ValueError otherwise."""
        if phase not in self.values:
            known = ", ".join(p.value for p in self.phases)
            raise ValueError(f"{phase!r} is not a {self.kind} phase ({known})")
        return phase

    def is_final(self, phase: str | None) -> bool:
        return phase in self.final

    def is_waiting(self, phase: str | None) -> bool:
        return phase in self.waiting

    def is_settled(self, phase: str | None) -> bool:
        return phase in self.settled


MODEL = Lifecycle(
    kind="Model",
    phases=ModelPhase,
    working=ModelPhase.PACKAGING,
    succeeded=ModelPhase.READY,
    failed=ModelPhase.FAILED,
    deleting=ModelPhase.DELETING,
    final=frozenset({ModelPhase.READY, ModelPhase.FAILED}),
    settled=frozenset({ModelPhase.READY, ModelPhase.FAILED}),
    waiting=frozenset(),
    restartable=frozenset({ModelPhase.FAILED}),
)
DATASET = Lifecycle(
    kind="Dataset",
    phases=DatasetPhase,
    working=DatasetPhase.INGESTING,
    succeeded=DatasetPhase.READY,
    failed=DatasetPhase.FAILED,
    deleting=DatasetPhase.DELETING,
    final=frozenset({DatasetPhase.READY, DatasetPhase.FAILED}),
    settled=frozenset({DatasetPhase.READY, DatasetPhase.FAILED}),
    waiting=frozenset(),
    restartable=frozenset({DatasetPhase.FAILED}),
)
EVALUATION = Lifecycle(
    kind="Evaluation",
    phases=EvaluationPhase,
    working=EvaluationPhase.RUNNING,
    succeeded=EvaluationPhase.COMPLETE,
    failed=EvaluationPhase.FAILED,
    deleting=EvaluationPhase.DELETING,
    final=frozenset({EvaluationPhase.COMPLETE, EvaluationPhase.FAILED}),
    settled=frozenset(),  # nothing waits for an evaluation
    waiting=frozenset({EvaluationPhase.PENDING}),  # for its model and dataset
    restartable=frozenset({EvaluationPhase.FAILED}),
)

# Kind name -> its lifecycle: the kinds that are custom resources, in dependency order.
LIFECYCLES: dict[str, Lifecycle[Any]] = {life.kind: life for life in (MODEL, DATASET, EVALUATION)}


def lifecycle(kind: str) -> Lifecycle[Any]:
    try:
        return LIFECYCLES[kind]
    except KeyError:
        raise ValueError(f"{kind!r} has no lifecycle; one of {sorted(LIFECYCLES)}") from None


class _AsMessage(enum.Enum):
    AS_MESSAGE = enum.auto()


AS_MESSAGE = _AsMessage.AS_MESSAGE
S = TypeVar("S", bound="Status")


def settle(
    status: S,
    phase: str,
    ready: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    *,
    summary: str | Literal[_AsMessage.AS_MESSAGE] | None = AS_MESSAGE,
) -> S:
    """Set phase, Ready condition and observedGeneration for `generation`, in place.

    The Ready condition gets (`ready`, `reason`, `message`); its lastTransitionTime
    changes only when its status does. `status.message` is `message`, unless `summary`
    says otherwise (a workload's success shows its result's summary, or nothing); an
    empty one is None. A phase not of the status's kind is refused (ValueError).
    """
    life = getattr(type(status), "lifecycle", None)
    if life is not None:
        life.check(phase)
    status.phase = phase
    status.message = (message if summary is AS_MESSAGE else summary) or None
    status.observed_generation = generation
    status.set_condition("Ready", ready, reason, message, generation)
    return status
