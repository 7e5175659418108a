"""Evaluations: order (named by what is evaluated, so the same order meets the same
record), get, list, delete. Their results are in `api_shim.routes.results`."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from pydantic import Field

from api_shim.auth import AccountScope, ScopeDep
from api_shim.idempotency import idempotent
from api_shim.params import NameStr
from api_shim.problems import responses
from api_shim.routes.entities import add_entity_routes, check_restart_allowed
from dyff.access import usable
from dyff.criteria import check_criteria
from dyff.errors import AlreadyExists, Conflict, Invalid
from dyff.labels import LABEL_MISMATCH, match_labels
from dyff.lifecycle import DatasetPhase, ModelPhase
from dyff.schema import (
    Dataset,
    Evaluation,
    EvaluationSpec,
    Labels,
    Model,
    ObjectMeta,
    Schema,
)

router = APIRouter()


class EvaluationOrder(Schema):
    """An evaluation to run. Without a name, the name is derived from what is evaluated, so
    ordering the same evaluation twice answers with the first."""

    name: NameStr | None = Field(default=None, description="Name; derived when absent.")
    labels: Labels = Field(default_factory=dict)
    spec: EvaluationSpec = Field(description="The evaluation's spec, as in the custom resource.")


def evaluation_name(spec: EvaluationSpec) -> str:
    """The name of an unnamed order: a digest of what is evaluated and how (not of how
    the work is scheduled), so identical orders meet on one record."""
    return (
        "e" + hashlib.sha256(json.dumps(_identity(spec), sort_keys=True).encode()).hexdigest()[:24]
    )


def normalized(spec: EvaluationSpec, account: str) -> EvaluationSpec:
    """The spec with references to the ordering account's own entities unqualified: the
    own account spelled out or left out is the same evaluation (same name, same spec)."""
    refs = {
        field: ref.model_copy(update={"account": None})
        for field, ref in (("model", spec.model), ("dataset", spec.dataset))
        if ref.account == account
    }
    return spec.model_copy(update=refs) if refs else spec


def _identity(spec: EvaluationSpec, account: str | None = None) -> dict[str, Any]:
    doc = (normalized(spec, account) if account else spec).wire()
    doc.pop("run", None)
    doc["metrics"] = sorted(set(doc.get("metrics", [])))
    return doc


def check_usable(scope: AccountScope, spec: EvaluationSpec) -> None:
    """The model and dataset exist and the caller may use them (one round trip); once
    both are Ready, their labels must match (`dyff.labels.match_labels`). Before that
    the order is taken, and the controller checks the labels when they are known."""
    refs = [(Model, spec.model, "spec.model"), (Dataset, spec.dataset, "spec.dataset")]
    found = scope.records.find_many([(k, r.account or scope.account, r.name) for k, r, _ in refs])
    for (kind, ref, field), entity in zip(refs, found, strict=True):
        if entity is None or not usable(entity, scope.account):
            raise Invalid(
                f"{kind.kind_name.lower()} {ref.name!r} not found or not usable",
                field=f"{field}.name",
            )
        if entity.metadata.deletion_timestamp is not None:
            raise Invalid(f"{kind.kind_name.lower()} {ref.name!r} is being deleted", field=field)
    model, dataset = found
    assert isinstance(model, Model) and isinstance(dataset, Dataset)
    if spec.criteria is not None and dataset.status.phase == DatasetPhase.READY:
        # Slices and gates name the dataset's attribute columns: a missing one now, not
        # after the evaluation ran.
        why = check_criteria(spec.criteria, dataset.status.attributes)
        if why is not None:
            raise Invalid(why, field="spec.criteria")
    if (
        model.status.phase == ModelPhase.READY
        and dataset.status.phase == DatasetPhase.READY
        and dataset.status.labels is not None
    ):
        match = match_labels(model.status.labels, dataset.status.labels, spec.label_mapping)
        if not match.allowed:
            raise Invalid(f"{LABEL_MISMATCH}: {match.message}", field=match.field)


@router.post(
    "/v1/evaluations",
    status_code=201,
    response_model=Evaluation,
    response_model_exclude_none=True,
    tags=["evaluations"],
    responses={
        200: {"model": Evaluation, "description": "The same evaluation, already ordered"},
        **responses(401, 409, 422),
    },
)
def order_evaluation(
    body: EvaluationOrder,
    scope: ScopeDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Order an evaluation. The same evaluation already ordered answers 200 with it; a
    failed one is restarted; otherwise it is created (201)."""
    records, account = scope.records, scope.account
    spec = normalized(body.spec, account)
    if spec is not body.spec:
        body = body.model_copy(update={"spec": spec})
    name = body.name or evaluation_name(spec)
    entity = Evaluation(
        metadata=ObjectMeta(name=name, namespace=account, labels=body.labels),
        spec=spec,
    )

    def create() -> tuple[dict[str, Any], int]:
        check_restart_allowed(records, Evaluation, account, name)
        check_usable(scope, spec)
        try:
            stored, outcome = records.create(entity)
            return stored.wire(), 201 if outcome == "created" else 200
        except AlreadyExists:
            existing = records.get(Evaluation, account, name)
            if _identity(existing.spec, account) != _identity(spec, account):
                raise Conflict(
                    f"evaluation {name!r} exists with a different spec", field="name"
                ) from None
            return existing.wire(), 200

    answer, status = idempotent(
        records, account, idempotency_key, body, Evaluation.kind_name, name, create
    )
    # Already a validated Evaluation: serialise it directly (the hot path of ordering).
    return JSONResponse(answer, status_code=status)


add_entity_routes(router, Evaluation)
