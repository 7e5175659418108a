"""The shim served by uvicorn on loopback, over each record and blob backend."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from api_shim.app import create_app
from dyff import accounts
from dyff.emulators import free_port
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore


@dataclass
class Shim:
    url: str
    records: RecordStore
    blobs: BlobStore
    admin_token: str

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def new_account(self) -> tuple[str, str]:
        """A fresh account and its token, so tests sharing a server never meet."""
        name = f"a{uuid.uuid4().hex[:12]}"
        with self.client(self.admin_token) as c:
            r = c.post("/v1/accounts", json={"name": name})
            assert r.status_code == 201, r.text
            return name, r.json()["token"]


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own
        pass


@contextmanager
def serve(app: object) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free loopback port."""
    port = free_port()
    server = _Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            limit_concurrency=1000,
            backlog=2048,
        )
    )  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module", params=["sqlite+file", "datastore+gcs"])
def shim(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shim]:
    """The shim over SQLite and a folder, or over the Datastore and GCS emulators."""
    tmp = tmp_path_factory.mktemp("shim")
    records: RecordStore
    blobs: BlobStore
    if request.param == "sqlite+file":
        from dyff.stores.file import FileBlobStore
        from dyff.stores.sqlite import SqliteRecordStore

        records, blobs = SqliteRecordStore(tmp / "records.db"), FileBlobStore(tmp / "blobs")
    else:
        request.getfixturevalue("datastore_emulator")
        request.getfixturevalue("gcs_emulator")
        from dyff.stores.datastore import DatastoreRecordStore
        from dyff.stores.gcs import GcsBlobStore, make_client

        records = DatastoreRecordStore("dyff-test", namespace=f"shim{uuid.uuid4().hex[:8]}")
        client = make_client()
        bucket = client.create_bucket(f"shim{uuid.uuid4().hex[:16]}")
        blobs = GcsBlobStore(bucket.name, client=client)
    admin = accounts.bootstrap(records, "admin")
    app = create_app(records, blobs, cache_dir=tmp / "cache")
    with serve(app) as url:
        yield Shim(url=url, records=records, blobs=blobs, admin_token=admin)
