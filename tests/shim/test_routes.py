"""Each router stands on its own: a small app around one router, its state and the problem
handlers, exercised in process (no server, no other router)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api_shim import problems
from api_shim.auth import current_caller
from api_shim.routes import health, models_datasets
from api_shim.state import AppState
from dyff import accounts, layout, uploads
from dyff.accounts import Authenticator, Caller
from dyff.schema import Model, UploadTicket
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore


def model_body(name: str, public: bool = False) -> dict[str, object]:
    upload = {"sha256": hashlib.sha256(b"w").hexdigest(), "sizeBytes": 1}
    return {
        "name": name,
        "spec": {"source": {"form": "transformers", "upload": upload}, "public": public},
    }


def models_app(records: SqliteRecordStore, blobs: FileBlobStore, tmp_path: Path) -> FastAPI:
    """A small app around the models and datasets router alone."""
    app = FastAPI()
    AppState(
        records=records,
        blobs=blobs,
        authenticator=Authenticator(records),
        cache_dir=tmp_path / "cache",
        upload_ttl=timedelta(hours=1),
        public_url="http://shim.test",
    ).attach(app)
    problems.install(app)
    app.include_router(models_datasets.router)
    return app


@pytest.fixture
def app(tmp_path: Path) -> Iterator[FastAPI]:
    records = SqliteRecordStore(tmp_path / "records.db")
    blobs = FileBlobStore(tmp_path / "blobs")
    yield models_app(records, blobs, tmp_path)
    records.close()
    blobs.close()


def test_the_models_router_alone_registers_reads_and_scopes(app: FastAPI) -> None:
    records = app.state.dyff.records
    accounts.create_account(records, "alice")
    accounts.create_account(records, "bob")
    alice, _ = accounts.mint_key(records, "alice")
    bob, _ = accounts.mint_key(records, "bob")
    with TestClient(app) as c:
        created = c.post(
            "/v1/models", json=model_body("m"), headers={"Authorization": f"Bearer {alice}"}
        )
        assert created.status_code == 201, created.text
        assert created.json()["upload"]["url"].startswith("http://shim.test/v1/uploads/alice/")
        got = c.get("/v1/models/m", headers={"Authorization": f"Bearer {alice}"})
        assert got.status_code == 200 and got.json()["metadata"]["namespace"] == "alice"
        # Another account's private model answers 404 as problem+json; no key answers 401.
        hidden = c.get("/v1/models/m?account=alice", headers={"Authorization": f"Bearer {bob}"})
        assert hidden.status_code == 404
        assert hidden.headers["content-type"].startswith(problems.MEDIA_TYPE)
        assert c.get("/v1/models/m").status_code == 401
        # Only this router is mounted.
        assert (
            c.get("/v1/evaluations", headers={"Authorization": f"Bearer {alice}"}).status_code
            == 404
        )


def test_the_caller_is_a_dependency_a_test_can_replace(app: FastAPI) -> None:
    app.dependency_overrides[current_caller] = lambda: Caller(
        account="carol", key_id="k", admin=False
    )
    with TestClient(app) as c:
        assert c.post("/v1/models", json=model_body("pm", public=True)).status_code == 201
        listed = c.get("/v1/models").json()["items"]
        assert [m["metadata"]["name"] for m in listed] == ["pm"]
        assert c.delete("/v1/models/pm").status_code == 202


def test_the_health_router_needs_no_state() -> None:
    app = FastAPI()
    app.include_router(health.router)
    with TestClient(app) as c:
        assert c.get("/healthz").json() == {"status": "ok"}


class SigningFileStore(FileBlobStore):
    """Answers upload tickets with a signed URL, as the GCS store does in production (the
    URL is never used here: the test puts the bytes itself, as Cloud Storage would)."""

    def signed_upload_url(self, key: str, ttl: timedelta) -> str:
        return f"https://storage.test/{key}?X-Goog-Signature=0"


def test_a_signed_upload_is_announced_once_its_bytes_are_there(tmp_path: Path) -> None:
    records = SqliteRecordStore(tmp_path / "records.db")
    blobs = SigningFileStore(tmp_path / "blobs")
    app = models_app(records, blobs, tmp_path)
    accounts.create_account(records, "alice")
    accounts.create_account(records, "bob")
    alice = {"Authorization": f"Bearer {accounts.mint_key(records, 'alice')[0]}"}
    bob = {"Authorization": f"Bearer {accounts.mint_key(records, 'bob')[0]}"}
    with TestClient(app) as c:
        created = c.post("/v1/models", json=model_body("m"), headers=alice)
        assert created.status_code == 201, created.text
        assert created.json()["upload"]["method"] == "POST"
        model = records.get(Model, "alice", "m")
        ticket = uploads.ticket_name(model)
        assert records.get(UploadTicket, "alice", ticket).status.phase is None

        early = c.post("/v1/models/m/upload/done", headers=alice)
        assert early.status_code == 409 and early.json()["field"] == "upload"
        assert records.get(UploadTicket, "alice", ticket).status.phase is None

        source = model.spec.source.upload
        assert source is not None
        blobs.put(layout.upload_key("alice", "Model", "m", source.sha256), b"w")
        assert c.post("/v1/models/m/upload/done", headers=bob).status_code == 404
        assert records.get(UploadTicket, "alice", ticket).status.phase is None
        done = c.post("/v1/models/m/upload/done", headers=alice)
        assert done.status_code == 204, done.text
        assert records.get(UploadTicket, "alice", ticket).status.phase == "Used"
    records.close()
