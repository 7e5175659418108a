"""Models and datasets: register (with an upload ticket for an `upload` source), get, list,
delete."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field

from api_shim.auth import CallerDep
from api_shim.idempotency import idempotent
from api_shim.params import NameStr
from api_shim.problems import responses
from api_shim.routes.entities import add_entity_routes, check_restart_allowed
from api_shim.state import AppState, StateDep
from dyff import uploads
from dyff.accounts import Caller
from dyff.errors import Conflict, NotFound
from dyff.lifecycle import ModelPhase
from dyff.schema import (
    Dataset,
    DatasetSpec,
    Entity,
    Labels,
    Model,
    ModelSpec,
    ObjectMeta,
    Schema,
)

E = TypeVar("E", bound=Entity)

router = APIRouter()


class ModelCreate(Schema):
    """A model to register; for an `upload` source the answer carries the upload URL."""

    name: NameStr = Field(description="Name, unique among the account's models.")
    labels: Labels = Field(default_factory=dict)
    spec: ModelSpec = Field(description="The model's spec, as in the custom resource.")


class DatasetCreate(Schema):
    """A dataset to register; for an `upload` source the answer carries the upload URL."""

    name: NameStr = Field(description="Name, unique among the account's datasets.")
    labels: Labels = Field(default_factory=dict)
    spec: DatasetSpec = Field(description="The dataset's spec, as in the custom resource.")


class Created(Schema, Generic[E]):
    """A created entity and, for uploads, where to send the file."""

    item: E = Field(description="The entity as stored.")
    upload: uploads.UploadInfo | None = Field(default=None, description="Upload instructions.")


def register(
    state: AppState,
    kind: type[Model] | type[Dataset],
    body: ModelCreate | DatasetCreate,
    who: Caller,
    request: Request,
    idempotency_key: str | None,
) -> Response:
    """Create the entity and, for an upload source, its one upload ticket. A replay of
    the same Idempotency-Key answers with the first answer, the same ticket included."""
    records, blobs = state.records, state.blobs
    entity = kind(
        metadata=ObjectMeta(name=body.name, namespace=who.account, labels=body.labels),
        spec=body.spec,
    )

    def create() -> tuple[dict[str, Any], int]:
        check_restart_allowed(records, kind, who.account, body.name)
        stored = records.create(entity)[0]
        ticket = None
        if stored.spec.source.upload is not None and not uploads.upload_present(blobs, stored):
            ticket = uploads.open_ticket(
                records, blobs, stored, state.base_url(request), state.upload_ttl
            )
        answer = {"item": stored.wire(), **({"upload": ticket.wire()} if ticket else {})}
        return answer, 201

    answer, status = idempotent(
        records, who.account, idempotency_key, body, kind.kind_name, body.name, create
    )
    return JSONResponse(answer, status_code=status)


@router.post(
    "/v1/models",
    status_code=201,
    response_model=Created[Model],
    response_model_exclude_none=True,
    tags=["models"],
    responses=responses(401, 409, 422),
)
def create_model(
    body: ModelCreate,
    who: CallerDep,
    state: StateDep,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Register a model. An `image` source is used as is; `uri` is ingested from the
    blob store; `upload` answers with an upload URL and a one-time token."""
    return register(state, Model, body, who, request, idempotency_key)


@router.post(
    "/v1/datasets",
    status_code=201,
    response_model=Created[Dataset],
    response_model_exclude_none=True,
    tags=["datasets"],
    responses=responses(401, 409, 422),
)
def create_dataset(
    body: DatasetCreate,
    who: CallerDep,
    state: StateDep,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Register a dataset, as for models."""
    return register(state, Dataset, body, who, request, idempotency_key)


def renew_ticket(
    state: AppState, kind: type[Model] | type[Dataset], name: str, who: Caller, request: Request
) -> uploads.UploadInfo:
    """A fresh upload ticket for an entity still waiting for its upload; the old token
    stops working. 409 for an entity being deleted, not uploaded, or past waiting."""
    entity = state.records.find(kind, who.account, name)  # only the caller's own
    what = f"{kind.kind_name.lower()} {name!r}"
    if entity is None:
        raise NotFound(f"{what} not found")
    if entity.metadata.deletion_timestamp is not None:
        raise Conflict(f"{what} is being deleted", field="metadata.deletionTimestamp")
    if entity.spec.source.upload is None:
        raise Conflict(f"{what} has no upload source", field="spec.source")
    waiting = entity.status.phase in (None, ModelPhase.WAITING_FOR_UPLOAD)
    if not waiting or uploads.upload_present(state.blobs, entity):
        raise Conflict(
            f"{what} is not waiting for its upload (phase {entity.status.phase})",
            field="status.phase",
        )
    info = uploads.open_ticket(
        state.records, state.blobs, entity, state.base_url(request), state.upload_ttl
    )
    assert info is not None
    return info


def _add_renew(kind: type[Model] | type[Dataset]) -> None:
    @router.post(
        f"/v1/{kind.plural}/{{name}}/upload",
        response_model=uploads.UploadInfo,
        response_model_exclude_none=True,
        tags=[kind.plural],
        responses=responses(401, 404, 409, 422),
        name=f"renew_{kind.kind_name}_upload",
    )
    def renew(
        name: NameStr, who: CallerDep, state: StateDep, request: Request
    ) -> uploads.UploadInfo:
        """A fresh upload URL and token for one still waiting for its upload (the
        ticket from registration expired or was lost); the old token stops working."""
        return renew_ticket(state, kind, name, who, request)

    @router.post(
        f"/v1/{kind.plural}/{{name}}/upload/done",
        status_code=204,
        tags=[kind.plural],
        responses=responses(401, 404, 409, 422),
        name=f"{kind.kind_name}_upload_done",
    )
    def upload_done(name: NameStr, who: CallerDep, state: StateDep) -> Response:
        """Say that the upload to a signed URL is complete, so ingestion starts at once
        (Cloud Storage itself tells no one; without this the controller's timer finds
        it). 409 if no upload of the declared size is there. The shim's own upload
        endpoint needs no such call."""
        entity = state.records.find(kind, who.account, name)  # only the caller's own
        if entity is None:
            raise NotFound(f"{kind.kind_name.lower()} {name!r} not found")
        uploads.announce_landed(state.records, state.blobs, entity)
        return Response(status_code=204)


_add_renew(Model)
_add_renew(Dataset)
add_entity_routes(router, Model)
add_entity_routes(router, Dataset)
