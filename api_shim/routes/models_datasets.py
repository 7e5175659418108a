"""Models and datasets: register (with an upload ticket for an `upload` source), get, list,
delete."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Header, Request
from pydantic import Field

from api_shim.auth import CallerDep
from api_shim.idempotency import idempotent
from api_shim.params import NameStr
from api_shim.problems import responses
from api_shim.routes.entities import add_entity_routes
from api_shim.state import AppState, StateDep
from dyff import uploads
from dyff.accounts import Caller
from dyff.schema import Dataset, DatasetSpec, Entity, Model, ModelSpec, ObjectMeta, Schema

E = TypeVar("E", bound=Entity)

router = APIRouter()


class ModelCreate(Schema):
    """A model to register; for an `upload` source the answer carries the upload URL."""

    name: NameStr = Field(description="Name, unique among the account's models.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels, for filtering.")
    spec: ModelSpec = Field(description="The model's spec, as in the custom resource.")


class DatasetCreate(Schema):
    """A dataset to register; for an `upload` source the answer carries the upload URL."""

    name: NameStr = Field(description="Name, unique among the account's datasets.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels, for filtering.")
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
) -> Created[Any]:
    records, blobs = state.records, state.blobs
    entity = kind(
        metadata=ObjectMeta(name=body.name, namespace=who.account, labels=body.labels),
        spec=body.spec,
    )

    def create() -> tuple[Any, int]:
        return records.create(entity)[0], 201

    stored, _ = idempotent(records, who.account, idempotency_key, body, kind, create)
    ticket = None
    if stored.spec.source.upload is not None and not uploads.upload_present(blobs, stored):
        ticket = uploads.open_ticket(
            records, blobs, stored, state.base_url(request), state.upload_ttl
        )
    return Created[Any](item=stored, upload=ticket)


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
) -> Created[Any]:
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
) -> Created[Any]:
    """Register a dataset, as for models."""
    return register(state, Dataset, body, who, request, idempotency_key)


add_entity_routes(router, Model)
add_entity_routes(router, Dataset)
