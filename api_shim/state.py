"""What every request shares (the stores, the key cache, the settings), kept on
`app.state` and reached by routes through the `StateDep` dependency."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Request

from dyff.accounts import Authenticator
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore


@dataclass(frozen=True)
class AppState:
    records: RecordStore
    blobs: BlobStore
    authenticator: Authenticator
    cache_dir: Path  # local copies of result files
    upload_ttl: timedelta
    public_url: str | None = None

    def base_url(self, request: Request) -> str:
        """Where clients reach the shim: the configured URL, else the request's."""
        return self.public_url or str(request.base_url).rstrip("/")

    def attach(self, app: FastAPI) -> None:
        app.state.dyff = self


async def get_state(request: Request) -> AppState:
    # async: a plain attribute read stays on the event loop (a sync dependency would take a
    # trip through the thread pool on every request).
    state: AppState = request.app.state.dyff
    return state


StateDep = Annotated[AppState, Depends(get_state)]
