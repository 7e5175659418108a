"""Deleting an account, and an entity's upload tickets, against each record backend."""

from __future__ import annotations

import pytest

from controller.cleanup import cleanup
from dyff import accounts, uploads
from dyff.schema import Account, ApiKey, Model, UploadTicket
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore
from tests import factories


def test_a_deleted_account_goes_after_its_last_entity(record_store: RecordStore) -> None:
    accounts.create_account(record_store, "acme")
    token, _ = accounts.mint_key(record_store, "acme")
    assert accounts.authenticate(record_store, token).account == "acme"
    record_store.create(factories.model("m1"))
    done = accounts.delete_account(record_store, "acme")
    assert (done.keys_revoked, done.entities_deleting, done.finished) == (1, 1, False)
    assert record_store.get(Model, "acme", "m1").metadata.deletion_timestamp is not None
    with pytest.raises(accounts.Unauthorized):
        accounts.authenticate(record_store, token)
    assert not accounts.finish_account_deletion(record_store, "acme")  # m1 is still there
    record_store.delete(Model, "acme", "m1")
    assert accounts.finish_account_deletion(record_store, "acme")
    assert record_store.find(Account, "acme", "acme") is None
    assert record_store.list_all(ApiKey, "acme") == []


def test_an_account_not_deleted_is_never_finished(record_store: RecordStore) -> None:
    accounts.create_account(record_store, "acme")
    assert not accounts.finish_account_deletion(record_store, "acme")
    assert record_store.find(Account, "acme", "acme") is not None


def test_cleanup_deletes_the_entitys_upload_ticket(
    record_store: RecordStore, blob_store: BlobStore
) -> None:
    model, _ = record_store.create(factories.model("m1"))
    other, _ = record_store.create(factories.model("m2"))
    first = uploads.open_ticket(record_store, blob_store, model, "http://shim")
    again = uploads.open_ticket(record_store, blob_store, model, "http://shim")
    uploads.open_ticket(record_store, blob_store, other, "http://shim")
    assert first is not None and again is not None
    assert first.url == again.url and first.token != again.token  # one ticket, new token
    assert len(uploads.tickets_of(record_store, model)) == 1
    cleanup(record_store, blob_store, model)
    assert uploads.tickets_of(record_store, model) == []
    assert len(record_store.list_all(UploadTicket, "acme")) == 1  # m2's stays
