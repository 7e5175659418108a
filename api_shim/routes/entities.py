"""GET one, list and DELETE, the same for every kind: `add_entity_routes(router, kind)`."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from fastapi import APIRouter, Query
from pydantic import Field

from api_shim.auth import ScopeDep
from api_shim.params import AccountQuery, NameStr
from api_shim.problems import responses
from api_shim.state import StateDep
from dyff.access import check_api_may_change
from dyff.errors import Conflict, Invalid, NotFound
from dyff.schema import Entity, Evaluation, Model, Schema
from dyff.stores.records import MAX_PAGE, RecordStore

E = TypeVar("E", bound=Entity)
# A label filter is `key=value` of a metadata label (`dyff.schema.LabelKey`, `LabelValue`).
MAX_LABEL_FILTERS = 16
MAX_LABEL_FILTER_CHARS = 400
MAX_WAIT_S = 30.0  # a long poll holds a worker thread: keep it short


class ListPage(Schema, Generic[E]):
    """One page of a listing."""

    items: list[E] = Field(description="Entities on this page.")
    next_page_token: str | None = Field(default=None, description="Token for the next page.")


def add_entity_routes(router: APIRouter, kind: type[E]) -> None:
    plural = kind.plural
    tag = plural

    @router.get(
        f"/v1/{plural}/{{name}}",
        response_model=kind,
        response_model_exclude_none=True,
        tags=[tag],
        responses=responses(401, 404, 422),
        name=f"get_{kind.kind_name}",
    )
    def get_one(
        name: NameStr,
        scope: ScopeDep,
        state: StateDep,
        account: AccountQuery = None,
        changed_from: Annotated[
            str | None,
            Query(alias="changedFrom", max_length=64, description="A resourceVersion seen."),
        ] = None,
        wait: Annotated[
            float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for a change.")
        ] = 0,
    ) -> Any:
        """The entity; with `changedFrom` and `wait`, as soon as its resourceVersion is
        another (a long poll: `dyff … --wait` follows a status without sleeping)."""
        entity = scope.readable(kind, name, account)
        if changed_from is None or wait <= 0:
            return entity
        return state.changes.wait_for(
            lambda: scope.readable(kind, name, account),
            lambda e: e.metadata.resource_version == changed_from,
            wait,
        )

    @router.get(
        f"/v1/{plural}",
        response_model=ListPage[kind],  # type: ignore[valid-type]
        response_model_exclude_none=True,
        tags=[tag],
        responses=responses(401, 422),
        name=f"list_{plural}",
    )
    def list_all(
        scope: ScopeDep,
        name: Annotated[str | None, Query(max_length=63, description="Name prefix.")] = None,
        phase: Annotated[str | None, Query(max_length=40, pattern=r"^[A-Za-z]+$")] = None,
        label: Annotated[
            list[Annotated[str, Field(max_length=MAX_LABEL_FILTER_CHARS)]] | None,
            Query(max_length=MAX_LABEL_FILTERS, description="key=value; repeat for several."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        page_token: Annotated[str | None, Query(alias="pageToken", max_length=200)] = None,
    ) -> Any:
        labels = {}
        for item in label or []:
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise Invalid(f"label filter {item!r} is not key=value", field="label")
            if k in labels:
                raise Invalid(f"label filter names key {k!r} more than once", field="label")
            labels[k] = v
        page = scope.records.list(
            kind,
            scope.account,
            phase=phase,
            labels=labels,
            name_prefix=name,
            limit=limit,
            page_token=page_token,
        )
        return ListPage[Any](items=page.items, next_page_token=page.next_page_token)

    @router.delete(
        f"/v1/{plural}/{{name}}",
        status_code=202,
        response_model=kind,
        response_model_exclude_none=True,
        tags=[tag],
        responses=responses(401, 404, 409, 422),
        name=f"delete_{kind.kind_name}",
    )
    def delete(name: NameStr, scope: ScopeDep, cascade: bool = False) -> Any:
        """Mark for deletion; the controller stops its work and deletes its bytes."""
        records, account = scope.records, scope.account
        entity = records.find(kind, account, name)  # only the caller's own, never a public one
        if entity is None:
            raise NotFound(f"{kind.kind_name} {name!r} not found")
        check_api_may_change(entity)
        dependents = _dependents(records, entity) if kind is not Evaluation else []
        if dependents and not cascade:
            raise Conflict(
                f"{kind.kind_name} {name!r} is used by evaluations "
                f"{', '.join(e.name for e in dependents[:10])}; delete with ?cascade=true",
                field="cascade",
            )
        for dependent in dependents:
            records.mark_deleting(Evaluation, account, dependent.name)
        return records.mark_deleting(kind, account, name)


def _dependents(records: RecordStore, entity: Entity) -> list[Evaluation]:
    field = "model" if isinstance(entity, Model) else "dataset"
    return [
        e
        for e in records.list_all(Evaluation, entity.account)
        if getattr(e.spec, field).name == entity.name
        and getattr(e.spec, field).account in (None, entity.account)
        and e.metadata.deletion_timestamp is None
    ]


def check_restart_allowed(
    records: RecordStore, kind: type[Entity], account: str, name: str
) -> None:
    """A create that would restart a failed entity managed from Git answers 409: its spec
    is Git's, and Argo CD would revert a spec applied here."""
    existing = records.find(kind, account, name)
    if existing is not None and existing.phase in kind.restartable_phases:
        check_api_may_change(existing)
