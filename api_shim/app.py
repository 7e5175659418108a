"""The HTTP API (FastAPI). It validates requests, writes records in transactions and reads
them back; it decides no lifecycle — the controller does.

Every route is scoped to the caller's account: another account's entity answers
404 unless its owner made it public (read and use only).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field

from api_shim import observability, problems
from api_shim.problems import responses
from dyff import accounts, layout, results, uploads
from dyff.accounts import Caller, Forbidden, Unauthorized
from dyff.errors import AlreadyExists, Conflict, Invalid, NotFound
from dyff.labels import LABEL_MISMATCH, match_labels
from dyff.schema import (
    NAME_PATTERN,
    ApiKey,
    Dataset,
    DatasetSpec,
    Entity,
    Evaluation,
    EvaluationSpec,
    IdempotencyRecord,
    IdempotencySpec,
    Model,
    ModelSpec,
    ObjectMeta,
    Schema,
    utcnow,
)
from dyff.stores.blobs import BlobStore
from dyff.stores.records import MAX_PAGE, RecordStore

E = TypeVar("E", bound=Entity)
NameStr = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
LABEL_PATTERN = r"^[A-Za-z0-9._/-]{1,63}=[A-Za-z0-9._-]{0,63}$"


# ------------------------------------------------------------- request bodies


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


class EvaluationOrder(Schema):
    """An evaluation to run. Without a name, the name is derived from what is evaluated, so
    ordering the same evaluation twice answers with the first."""

    name: NameStr | None = Field(default=None, description="Name; derived when absent.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels, for filtering.")
    spec: EvaluationSpec = Field(description="The evaluation's spec, as in the custom resource.")


class Created(Schema, Generic[E]):
    """A created entity and, for uploads, where to send the file."""

    item: E = Field(description="The entity as stored.")
    upload: uploads.UploadInfo | None = Field(default=None, description="Upload instructions.")


class ListPage(Schema, Generic[E]):
    """One page of a listing."""

    items: list[E] = Field(description="Entities on this page.")
    next_page_token: str | None = Field(default=None, description="Token for the next page.")


class AccountCreate(Schema):
    name: NameStr = Field(description="Account name; also its namespace.")
    display_name: str | None = Field(default=None, description="Human name.")


class KeyCreate(Schema):
    expires_in_days: int | None = Field(
        default=90, ge=1, le=3650, description="Days until the key expires; null for never."
    )


class KeyInfo(Schema):
    id: str = Field(description="Key id.")
    account: str = Field(description="Owning account.")
    admin: bool = Field(description="May manage accounts.")
    expires: str | None = Field(default=None, description="Expiry (RFC 3339).")
    revoked: bool = Field(description="Revoked keys never work again.")


class KeyCreated(Schema):
    token: str = Field(description="The bearer token; shown once, never stored.")
    key: KeyInfo = Field(description="The stored key.")


class Health(Schema):
    status: str = Field(description="ok")


class PredictionRows(Schema):
    """Rows of the predictions table matching a query."""

    total: int = Field(description="Rows matching the filters.")
    rows: list[dict[str, Any]] = Field(description="The requested page of rows.")
    labels: list[str] | None = Field(
        default=None,
        description="Class names by id (of `label`, `predicted`, `topk_labels`): the dataset's "
        "labels, then any model label the dataset lacks.",
    )


def _key_info(key: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=key.name,
        account=key.account,
        admin=key.spec.admin,
        expires=key.spec.expires.isoformat() if key.spec.expires else None,
        revoked=key.spec.revoked,
    )


def evaluation_name(spec: EvaluationSpec) -> str:
    """The name of an unnamed order: a digest of what is evaluated and how (not of how
    the work is scheduled), so identical orders meet on one record."""
    return (
        "e" + hashlib.sha256(json.dumps(_identity(spec), sort_keys=True).encode()).hexdigest()[:24]
    )


def _identity(spec: EvaluationSpec) -> dict[str, Any]:
    doc = spec.wire()
    doc.pop("run", None)
    doc["metrics"] = sorted(set(doc.get("metrics", [])))
    return doc


# ------------------------------------------------------------------ the app

_bearer = HTTPBearer(auto_error=False)


async def _caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None:
        raise Unauthorized("missing bearer token")
    authenticator: accounts.Authenticator = request.app.state.authenticator
    # A cache hit needs no I/O, so it stays on the event loop; a miss reads a record.
    caller = authenticator.cached(credentials.credentials)
    if caller is None:
        caller = await run_in_threadpool(authenticator, credentials.credentials)
    return caller


CallerDep = Annotated[Caller, Depends(_caller)]


def create_app(
    records: RecordStore,
    blobs: BlobStore,
    *,
    public_url: str | None = None,
    cache_dir: Path | None = None,
    upload_ttl: timedelta = uploads.DEFAULT_TTL,
    auth_cache_seconds: float = 5.0,
) -> FastAPI:
    cache = cache_dir or Path.home() / ".cache" / "dyff" / "results"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        records.close()
        blobs.close()

    app = FastAPI(
        title="dyff",
        version="v1",
        description="Evaluate AI models: register models and datasets, order evaluations, "
        "query their results.",
        lifespan=lifespan,
    )
    app.state.authenticator = accounts.Authenticator(records, ttl=auth_cache_seconds)
    problems.install(app)
    observability.install(app)

    def base_url(request: Request) -> str:
        return public_url or str(request.base_url).rstrip("/")

    def readable(kind: type[E], who: Caller, name: str, account: str | None) -> E:
        """The entity if the caller may read it; 404 otherwise (existence does not leak)."""
        owner = account or who.account
        entity = records.find(kind, owner, name)
        if entity is None or (owner != who.account and not getattr(entity.spec, "public", False)):
            raise NotFound(f"{kind.kind_name} {name!r} not found")
        return entity

    def idempotent(
        who: Caller,
        key: str | None,
        body: Schema,
        kind: type[E],
        create: Callable[[], tuple[E, int]],
    ) -> tuple[E, int]:
        """Run `create` once per Idempotency-Key; a retry gets the first answer."""
        if key is None:
            return create()
        request_hash = hashlib.sha256(
            json.dumps({"kind": kind.kind_name, "body": body.wire()}, sort_keys=True).encode()
        ).hexdigest()
        record_name = "i" + hashlib.sha256(key.encode()).hexdigest()[:40]
        seen = records.find(IdempotencyRecord, who.account, record_name)
        if seen is not None:
            if seen.spec.request_hash != request_hash:
                raise Invalid(
                    "Idempotency-Key was used with a different request", field="Idempotency-Key"
                )
            return records.get(kind, who.account, seen.spec.target_name), seen.spec.status_code
        entity, status = create()
        with contextlib.suppress(AlreadyExists):  # a concurrent retry recorded the same answer
            records.create(
                IdempotencyRecord(
                    metadata=ObjectMeta(name=record_name, namespace=who.account),
                    spec=IdempotencySpec(
                        request_hash=request_hash,
                        target_kind=kind.kind_name,
                        target_name=entity.name,
                        status_code=status,
                    ),
                )
            )
        return entity, status

    # ---------------------------------------------------------------- health

    @app.get("/healthz", response_model=Health, tags=["ops"])
    def healthz() -> Health:
        return Health(status="ok")

    # ------------------------------------------------------ accounts and keys

    @app.post(
        "/v1/accounts",
        status_code=201,
        response_model=KeyCreated,
        tags=["accounts"],
        responses=responses(401, 403, 409, 422),
    )
    def create_account(body: AccountCreate, who: CallerDep) -> KeyCreated:
        """Create an account and its first key (admin keys only)."""
        if not who.admin:
            raise Forbidden("only admin keys may create accounts")
        accounts.create_account(records, body.name, body.display_name)
        token, key = accounts.mint_key(records, body.name)
        return KeyCreated(token=token, key=_key_info(key))

    @app.post(
        "/v1/keys",
        status_code=201,
        response_model=KeyCreated,
        tags=["accounts"],
        responses=responses(401, 422),
    )
    def create_key(body: KeyCreate, who: CallerDep) -> KeyCreated:
        """Mint another key for the caller's account."""
        expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
        token, key = accounts.mint_key(records, who.account, expires_in=expires)
        return KeyCreated(token=token, key=_key_info(key))

    @app.get("/v1/keys", response_model=list[KeyInfo], tags=["accounts"], responses=responses(401))
    def list_keys(who: CallerDep) -> list[KeyInfo]:
        return [_key_info(k) for k in records.list_all(ApiKey, who.account)]

    @app.delete(
        "/v1/keys/{key_id}",
        response_model=KeyInfo,
        tags=["accounts"],
        responses=responses(401, 404, 422),
    )
    def revoke_key(key_id: NameStr, who: CallerDep) -> KeyInfo:
        revoked = accounts.revoke_key(records, who.account, key_id)
        app.state.authenticator.forget(who.account, key_id)
        return _key_info(revoked)

    # --------------------------------------------------- models and datasets

    def register(
        kind: type[Model] | type[Dataset],
        body: ModelCreate | DatasetCreate,
        who: Caller,
        request: Request,
        idempotency_key: str | None,
    ) -> Created[Any]:
        entity = kind(
            metadata=ObjectMeta(name=body.name, namespace=who.account, labels=body.labels),
            spec=body.spec,
        )

        def create() -> tuple[Any, int]:
            return records.create(entity)[0], 201

        stored, _ = idempotent(who, idempotency_key, body, kind, create)
        ticket = None
        if stored.spec.source.upload is not None and not uploads.upload_present(blobs, stored):
            ticket = uploads.open_ticket(records, blobs, stored, base_url(request), upload_ttl)
        return Created[Any](item=stored, upload=ticket)

    @app.post(
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
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> Created[Any]:
        """Register a model. An `image` source is used as is; `uri` is ingested from the
        blob store; `upload` answers with an upload URL and a one-time token."""
        return register(Model, body, who, request, idempotency_key)

    @app.post(
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
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> Created[Any]:
        """Register a dataset, as for models."""
        return register(Dataset, body, who, request, idempotency_key)

    @app.put(
        "/v1/uploads/{account}/{ticket}",
        status_code=204,
        tags=["uploads"],
        responses=responses(401, 409, 413, 422),
    )
    async def upload(
        account: NameStr,
        ticket: NameStr,
        request: Request,
        x_dyff_upload_token: Annotated[str, Header(max_length=256)],
    ) -> Response:
        """Receive the declared file for an upload ticket: once, checked against the
        declared size and sha256; nothing is stored when it does not match."""
        # Content-Length belongs to the HTTP layer; a malformed one never reaches us.
        length = request.headers.get("content-length", "")
        await run_in_threadpool(
            uploads.receive,
            records,
            blobs,
            account,
            ticket,
            x_dyff_upload_token,
            _sync_chunks(request),
            int(length) if length.isdigit() else None,
        )
        return Response(status_code=204)

    # ------------------------------------------------------------ evaluations

    def check_usable(who: Caller, spec: EvaluationSpec) -> None:
        """The model and dataset exist and the caller may use them (one round trip); once
        both are Ready, their labels must match (`dyff.labels.match_labels`). Before that
        the order is taken, and the controller checks the labels when they are known."""
        refs = [(Model, spec.model, "spec.model"), (Dataset, spec.dataset, "spec.dataset")]
        found = records.find_many([(k, r.account or who.account, r.name) for k, r, _ in refs])
        for (kind, ref, field), entity in zip(refs, found, strict=True):
            owner = ref.account or who.account
            public = entity is not None and getattr(entity.spec, "public", False)
            if entity is None or (owner != who.account and not public):
                raise Invalid(
                    f"{kind.kind_name.lower()} {ref.name!r} not found or not usable",
                    field=f"{field}.name",
                )
            if entity.metadata.deletion_timestamp is not None:
                raise Invalid(
                    f"{kind.kind_name.lower()} {ref.name!r} is being deleted", field=field
                )
        model, dataset = found
        assert isinstance(model, Model) and isinstance(dataset, Dataset)
        if (
            model.status.phase == "Ready"
            and dataset.status.phase == "Ready"
            and dataset.status.labels is not None
        ):
            match = match_labels(model.status.labels, dataset.status.labels, spec.label_mapping)
            if not match.allowed:
                raise Invalid(f"{LABEL_MISMATCH}: {match.message}", field=match.field)

    @app.post(
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
        who: CallerDep,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> Response:
        """Order an evaluation. The same evaluation already ordered answers 200 with it; a
        failed one is restarted; otherwise it is created (201)."""
        check_usable(who, body.spec)
        name = body.name or evaluation_name(body.spec)
        entity = Evaluation(
            metadata=ObjectMeta(name=name, namespace=who.account, labels=body.labels),
            spec=body.spec,
        )

        def create() -> tuple[Evaluation, int]:
            try:
                stored, outcome = records.create(entity)
                return stored, 201 if outcome == "created" else 200
            except AlreadyExists:
                existing = records.get(Evaluation, who.account, name)
                if _identity(existing.spec) != _identity(body.spec):
                    raise Conflict(
                        f"evaluation {name!r} exists with a different spec", field="name"
                    ) from None
                return existing, 200

        stored, status = idempotent(who, idempotency_key, body, Evaluation, create)
        # Already a validated Evaluation: serialise it directly (the hot path of ordering).
        return JSONResponse(stored.wire(), status_code=status)

    def evaluation_results(who: Caller, name: str) -> tuple[Evaluation, results.Results]:
        evaluation = readable(Evaluation, who, name, None)
        if evaluation.status.phase != "Complete":
            raise Conflict(
                f"evaluation {name!r} is {evaluation.status.phase or 'Pending'}, not Complete",
                field="status.phase",
            )
        manifest = json.loads(
            blobs.get(
                layout.manifest_key(
                    evaluation.account, evaluation.name, evaluation.metadata.uid or ""
                )
            )
        )
        paths = results.local_paths(blobs, manifest["files"], cache)
        return evaluation, results.Results(paths)

    def label_names(evaluation: Evaluation) -> list[str] | None:
        """Names of the label ids in the predictions: the dataset's labels, then the model
        labels the dataset lacks (from metrics.json; the dataset's record for older ones)."""
        key = layout.metrics_key(evaluation.account, evaluation.name, evaluation.metadata.uid or "")
        with contextlib.suppress(NotFound, ValueError):
            doc = json.loads(blobs.get(key))
            if isinstance(doc.get("labels"), list):
                return [str(x) for x in doc["labels"] + (doc.get("extraLabels") or [])]
        ref = evaluation.spec.dataset
        dataset = records.find(Dataset, ref.account or evaluation.account, ref.name)
        return None if dataset is None else dataset.status.labels

    @app.get(
        "/v1/evaluations/{name}/metrics", tags=["results"], responses=responses(401, 404, 409, 422)
    )
    def get_metrics(name: NameStr, who: CallerDep) -> dict[str, Any]:
        """The full metrics of a complete evaluation."""
        evaluation = readable(Evaluation, who, name, None)
        if evaluation.status.phase != "Complete":
            raise Conflict(f"evaluation {name!r} is not Complete", field="status.phase")
        key = layout.metrics_key(evaluation.account, name, evaluation.metadata.uid or "")
        doc: dict[str, Any] = json.loads(blobs.get(key))
        return doc

    @app.get(
        "/v1/evaluations/{name}/predictions",
        response_model=PredictionRows,
        tags=["results"],
        responses=responses(401, 404, 409, 422),
    )
    def get_predictions(
        name: NameStr,
        who: CallerDep,
        q: Annotated[results.PredictionQuery, Query()],
    ) -> PredictionRows:
        """Predictions filtered and paged by structured parameters (no SQL)."""
        evaluation, res = evaluation_results(who, name)
        frame = res.rows(q)
        return PredictionRows(
            total=res.count(q), rows=frame.to_dicts(), labels=label_names(evaluation)
        )

    @app.get(
        "/v1/evaluations/{name}/report",
        response_class=HTMLResponse,
        tags=["results"],
        responses=responses(401, 404, 409, 422),
    )
    def get_report(name: NameStr, who: CallerDep) -> HTMLResponse:
        """A self-contained HTML report of a complete evaluation: metrics, confusion matrix,
        per-class scores, reliability diagram and the most confident errors."""
        from dyff.report import build_report

        readable(Evaluation, who, name, None)  # 404 for other accounts' evaluations
        return HTMLResponse(build_report(records, blobs, who.account, name, cache))

    # --------------------------------------------- get, list, delete per kind

    def add_entity_routes(kind: type[E]) -> None:
        plural = kind.plural
        tag = plural

        @app.get(
            f"/v1/{plural}/{{name}}",
            response_model=kind,
            response_model_exclude_none=True,
            tags=[tag],
            responses=responses(401, 404, 422),
            name=f"get_{kind.kind_name}",
        )
        def get_one(
            name: NameStr,
            who: CallerDep,
            account: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=63)] = None,
        ) -> Any:
            return readable(kind, who, name, account)

        @app.get(
            f"/v1/{plural}",
            response_model=ListPage[kind],  # type: ignore[valid-type]
            response_model_exclude_none=True,
            tags=[tag],
            responses=responses(401, 422),
            name=f"list_{plural}",
        )
        def list_all(
            who: CallerDep,
            name: Annotated[str | None, Query(max_length=63, description="Name prefix.")] = None,
            phase: Annotated[str | None, Query(max_length=40)] = None,
            label: Annotated[
                list[str] | None, Query(description="key=value; repeat for several.")
            ] = None,
            limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
            page_token: Annotated[str | None, Query(alias="pageToken", max_length=200)] = None,
        ) -> Any:
            labels = {}
            for item in label or []:
                k, sep, v = item.partition("=")
                if not sep or not k:
                    raise Invalid(f"label filter {item!r} is not key=value", field="label")
                labels[k] = v
            page = records.list(
                kind,
                who.account,
                phase=phase,
                labels=labels,
                name_prefix=name,
                limit=limit,
                page_token=page_token,
            )
            return ListPage[Any](items=page.items, next_page_token=page.next_page_token)

        @app.delete(
            f"/v1/{plural}/{{name}}",
            status_code=202,
            response_model=kind,
            response_model_exclude_none=True,
            tags=[tag],
            responses=responses(401, 404, 409, 422),
            name=f"delete_{kind.kind_name}",
        )
        def delete(name: NameStr, who: CallerDep, cascade: bool = False) -> Any:
            """Mark for deletion; the controller stops its work and deletes its bytes."""
            entity = records.find(kind, who.account, name)
            if entity is None:
                raise NotFound(f"{kind.kind_name} {name!r} not found")
            dependents = _dependents(records, entity) if kind is not Evaluation else []
            if dependents and not cascade:
                raise Conflict(
                    f"{kind.kind_name} {name!r} is used by evaluations "
                    f"{', '.join(e.name for e in dependents[:10])}; delete with ?cascade=true",
                    field="cascade",
                )
            for dependent in dependents:
                _mark_deleting(records, Evaluation, who.account, dependent.name)
            return _mark_deleting(records, kind, who.account, name)

    for kind in (Model, Dataset, Evaluation):
        add_entity_routes(kind)

    return app


def _sync_chunks(request: Request) -> Any:
    """Bridge the request's async body stream to the blocking blob store in a worker thread."""
    import anyio.from_thread

    stream = request.stream().__aiter__()

    def chunks() -> Any:
        while True:
            try:
                yield anyio.from_thread.run(stream.__anext__)  # type: ignore[arg-type]
            except StopAsyncIteration:
                return

    return chunks()


def _dependents(records: RecordStore, entity: Entity) -> list[Evaluation]:
    field = "model" if isinstance(entity, Model) else "dataset"
    return [
        e
        for e in records.list_all(Evaluation, entity.account)
        if getattr(e.spec, field).name == entity.name
        and getattr(e.spec, field).account in (None, entity.account)
        and e.metadata.deletion_timestamp is None
    ]


def _mark_deleting(records: RecordStore, kind: type[E], account: str, name: str) -> E:
    def mark(entity: E) -> None:
        if entity.metadata.deletion_timestamp is None:
            entity.metadata.deletion_timestamp = utcnow()

    return records.mutate(kind, account, name, mark)
