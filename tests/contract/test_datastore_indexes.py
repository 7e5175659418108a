"""The Datastore emulator in the tests enforces config/datastore/index.yaml."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import datastore
from google.cloud.datastore.query import PropertyFilter

from dyff import emulators


def test_queries_needing_an_unlisted_index_fail(datastore_emulator: emulators.Emulator) -> None:
    """Proof that the contract suite's queries are covered by index.yaml: the same
    emulator refuses a query shape whose composite index the file does not list."""
    client = datastore.Client(project="dyff-test", namespace="index-check")
    entity = datastore.Entity(client.key("Tenant", "a", "Model", "m"))
    entity.update({"phase": "Ready", "version": 1})
    client.put(entity)
    query = client.query(kind="Model", ancestor=client.key("Tenant", "a"))
    query.add_filter(filter=PropertyFilter("phase", "=", "Ready"))
    query.order = ["-version"]
    with pytest.raises(gexc.BadRequest, match="composite index"):
        list(query.fetch())
