"""The HTTP API (FastAPI). It validates requests, writes records in transactions and reads
them back; it decides no lifecycle — the controller does.

`create_app` builds the shared state and puts the pieces together: the routers in
`api_shim.routes` (one per resource), authentication and account scoping in `api_shim.auth`
(another account's entity answers 404 unless its owner made it public), problem+json errors
in `api_shim.problems`, logs and metrics in `api_shim.observability`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

from api_shim import edge, observability, problems
from api_shim.routes import (
    accounts,
    comparisons,
    evaluations,
    health,
    models_datasets,
    results,
    ui,
    uploads,
)
from api_shim.state import AppState
from dyff.accounts import Authenticator
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore
from dyff.uploads import DEFAULT_TTL


def create_app(
    records: RecordStore,
    blobs: BlobStore,
    *,
    public_url: str | None = None,
    cache_dir: Path | None = None,
    upload_ttl: timedelta = DEFAULT_TTL,
    auth_cache_seconds: float = 5.0,
) -> FastAPI:
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
        docs_url=None,  # served below, with a Content-Security-Policy of its own
        redoc_url=None,
    )
    AppState(
        records=records,
        blobs=blobs,
        authenticator=Authenticator(records, ttl=auth_cache_seconds),
        cache_dir=cache_dir or Path.home() / ".cache" / "dyff" / "results",
        upload_ttl=upload_ttl,
        public_url=public_url,
    ).attach(app)
    problems.install(app)
    app.add_middleware(edge.BodyLimits)  # inside observability: refusals are logged and counted
    observability.install(app)
    # Outside everything, Starlette's error middleware included: every response gets them.
    build = app.build_middleware_stack
    setattr(app, "build_middleware_stack", lambda: edge.SecurityHeaders(build()))  # noqa: B010

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title="dyff")
        html = bytes(page.body).decode()
        return HTMLResponse(html, headers={"Content-Security-Policy": edge.docs_csp(html)})

    # Each included router costs every request routed past it a match, so the hot routes
    # (ordering, reading entities) come first. No path is served by two routers, so the
    # order changes no answer, only the order of /openapi.json's paths.
    for module in (
        evaluations,
        models_datasets,
        results,
        comparisons,
        uploads,
        accounts,
        health,
        ui,
    ):
        app.include_router(module.router)
    return app
