"""In production an upload URL is a GCS V4-signed resumable upload, not the shim."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.cloud import storage  # type: ignore[attr-defined]
from google.oauth2 import service_account

from dyff import uploads
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
