"""What every request shares (the stores, the key cache, the settings), kept on
`app.state` and reached by routes through the `StateDep` dependency."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import Depends, FastAPI, Request

from dyff.accounts import Authenticator
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

T = TypeVar("T")


class Changes:
    """Wakes requests waiting for a record to change (`GET …?changedFrom=&wait=`): at
    once for a write through this process's store, else at their next look."""

    LOOK_EVERY_S = 0.2  # writes by other processes (workloads, other shim instances)

    def __init__(self) -> None:
        self._changed = threading.Condition()

    def notify(self, *_: object) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, read: Callable[[], T], unchanged: Callable[[T], bool], seconds: float) -> T:
        """`read()` again until `unchanged(result)` is false or `seconds` pass."""
        deadline = time.monotonic() + seconds
        current = read()
        while unchanged(current) and (left := deadline - time.monotonic()) > 0:
            with self._changed:
                self._changed.wait(min(left, self.LOOK_EVERY_S))
            current = read()
        return current


@dataclass(frozen=True)
class AppState:
    records: RecordStore
    blobs: BlobStore
    authenticator: Authenticator
    cache_dir: Path  # local copies of result files
    upload_ttl: timedelta
    public_url: str | None = None
    changes: Changes = field(default_factory=Changes)

    def base_url(self, request: Request) -> str:
        """Where clients reach the shim: the configured URL, else the request's."""
        return self.public_url or str(request.base_url).rstrip("/")

    def attach(self, app: FastAPI) -> None:
        app.state.dyff = self
        self.records.on_write(self.changes.notify)


async def get_state(request: Request) -> AppState:
    # async: a plain attribute read stays on the event loop (a sync dependency would take a
    # trip through the thread pool on every request).
    state: AppState = request.app.state.dyff
    return state


StateDep = Annotated[AppState, Depends(get_state)]
