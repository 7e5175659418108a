"""Errors as application/problem+json (RFC 9457), naming the failing field; never a trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from dyff.errors import DyffError
from dyff.schema import Schema

log = logging.getLogger("dyff.shim")
MEDIA_TYPE = "application/problem+json"


class FieldError(Schema):
    field: str = Field(description="Dotted path of the failing field.")
    message: str = Field(description="What is wrong with it.")


class Problem(Schema):
    """An RFC 9457 problem document."""

    type: str = Field(default="about:blank", description="Problem type URI.")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(description="HTTP status code.")
    detail: str = Field(default="", description="What went wrong in this request.")
    field: str | None = Field(default=None, description="The failing field, when there is one.")
    errors: list[FieldError] = Field(default_factory=list, description="Every failing field.")
    request_id: str | None = Field(default=None, description="Id of the request, for the logs.")


def _response(request: Request, problem: Problem, headers: dict[str, str] | None = None) -> Any:
    problem.request_id = getattr(request.state, "request_id", None)
    return JSONResponse(
        problem.wire(), status_code=problem.status, media_type=MEDIA_TYPE, headers=headers
    )


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(DyffError)
    async def dyff_error(request: Request, exc: DyffError) -> Any:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        problem = Problem(title=exc.title, status=exc.status, detail=exc.message, field=exc.field)
        if exc.field:
            problem.errors = [FieldError(field=exc.field, message=exc.message)]
        return _response(request, problem, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Any:
        errors = [
            FieldError(field=_loc(e.get("loc", ())), message=str(e.get("msg", "invalid")))
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        problem = Problem(
            title="Invalid",
            status=422,
            detail=detail,
            field=errors[0].field if errors else None,
            errors=errors,
        )
        return _response(request, problem)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Any:
        problem = Problem(title=str(exc.detail), status=exc.status_code, detail=str(exc.detail))
        return _response(request, problem, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Any:
        log.exception("unhandled error", extra={"request_id": request.state.request_id})
        problem = Problem(title="Internal error", status=500, detail="internal error")
        return _response(request, problem)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses an endpoint can give; every endpoint can
    answer 400 to a request it cannot parse."""
    statuses = tuple(sorted({400, *statuses}))
    return {
        s: {
            "model": Problem,
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for s in statuses
    }
