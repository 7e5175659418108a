"""GET /healthz. (Prometheus `/metrics` comes with `api_shim.observability`.)"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field

from dyff.schema import Schema

router = APIRouter(tags=["ops"])


class Health(Schema):
    status: str = Field(description="ok")


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")
