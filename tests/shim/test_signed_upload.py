"""In production an upload URL is a GCS V4-signed resumable upload, not the shim."""

from __future__ import annotations

import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import storage  # type: ignore[attr-defined]
from google.oauth2 import service_account

from api_shim.app import create_app
from dyff import accounts, uploads
from dyff.schema import Model, UploadTicket
from dyff.stores.file import FileBlobStore
from dyff.stores.gcs import GcsBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories


def signing_store() -> GcsBlobStore:
    """A store whose credentials can sign locally (a generated service-account key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    credentials = service_account.Credentials.from_service_account_info(
        {
            "type": "service_account",
            "client_email": "dyff-shim@proj.iam.gserviceaccount.com",
            "private_key": pem,
            "token_uri": "https://oauth2.googleapis.com/token",
            "project_id": "proj",
        }
    )
    client = storage.Client(project="proj", credentials=credentials)
    return GcsBlobStore("dyff-prod", prefix="dyff", client=client)


def test_production_upload_is_a_v4_signed_resumable_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    records = SqliteRecordStore(tmp_path / "r.db")  # type: ignore[operator]
    model = factories.model("m1")
    info = uploads.open_ticket(records, signing_store(), model, "https://shim", timedelta(hours=2))
    assert info is not None and info.method == "POST" and info.token is None
    assert info.headers == {"x-goog-resumable": "start"}
    url = urlsplit(info.url)
    assert url.netloc == "storage.googleapis.com"
    source = model.spec.source.upload
    assert source is not None
    assert url.path == f"/dyff-prod/dyff/accounts/acme/uploads/models/m1/{source.sha256}"
    query = parse_qs(url.query)
    assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
    assert query["X-Goog-Expires"] == ["7200"]
    assert query["X-Goog-SignedHeaders"] == ["host;x-goog-resumable"]
    assert query["X-Goog-Credential"][0].startswith("dyff-shim@proj.iam.gserviceaccount.com/")
    assert len(query["X-Goog-Signature"][0]) == 512  # RSA-2048, hex


def test_emulator_and_file_stores_use_the_shims_endpoint(
    gcs_emulator: object, tmp_path: object
) -> None:
    from dyff.stores.gcs import make_client

    records = SqliteRecordStore(tmp_path / "r.db")  # type: ignore[operator]
    store = GcsBlobStore("any", client=make_client())
    info = uploads.open_ticket(records, store, factories.model("m1"), "http://shim:8080")
    assert info is not None and info.method == "PUT" and info.token
    assert info.url.startswith("http://shim:8080/v1/uploads/acme/u")


class ResumableStandIn(BaseHTTPRequestHandler):
    """Stands in for Cloud Storage's signed resumable upload (XML API): POST with
    `x-goog-resumable: start` answers a session URL; a PUT there stores the object. It
    writes into a blob store, as the bucket would, and tells no one."""

    blobs: FileBlobStore

    def do_POST(self) -> None:
        assert self.headers["x-goog-resumable"] == "start"
        self.send_response(201)
        self.send_header("Location", f"http://{self.headers['Host']}/session{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        key = urlsplit(self.path).path.removeprefix("/session/")
        self.blobs.put(key, data)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_the_client_announces_a_signed_upload_once_it_is_done(tmp_path: Path) -> None:
    from dyff.client import Client, ClientConfig
    from tests.shim.conftest import serve

    blobs = FileBlobStore(tmp_path / "blobs")
    bucket = ThreadingHTTPServer(("127.0.0.1", 0), ResumableStandIn)
    ResumableStandIn.blobs = blobs
    threading.Thread(target=bucket.serve_forever, daemon=True).start()
    signing_url = f"http://127.0.0.1:{bucket.server_address[1]}"
    blobs.signed_upload_url = lambda key, ttl: f"{signing_url}/{key}"  # type: ignore[attr-defined]
    records = SqliteRecordStore(tmp_path / "r.db")
    accounts.create_account(records, "acme")
    token, _ = accounts.mint_key(records, "acme")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights" * 100)
    try:
        app = create_app(records, blobs, cache_dir=tmp_path / "cache")
        with serve(app) as url, Client(ClientConfig(server=url, api_key=token)) as c:
            c.register_upload("models", "m1", "transformers", weights)
        model = records.get(Model, "acme", "m1")
        assert uploads.upload_present(blobs, model)  # the bytes went to the "bucket"
        # ...and the client said so: the ticket is Used, the controller's event.
        ticket = records.get(UploadTicket, "acme", uploads.ticket_name(model))
        assert ticket.status.phase == "Used"
    finally:
        bucket.shutdown()
        records.close()
