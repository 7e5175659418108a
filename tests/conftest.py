"""Shared fixtures: the real emulators (started once per session) and a fresh store per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dyff import emulators
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

ROOT = Path(__file__).resolve().parent.parent
INDEX_YAML = ROOT / "config" / "datastore" / "index.yaml"

# Nothing may reach a hub or phone home during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")


@pytest.fixture(scope="session")
def datastore_emulator() -> Iterator[emulators.Emulator]:
    """The Cloud Datastore emulator, enforcing config/datastore/index.yaml."""
    missing = emulators.datastore_emulator_missing()
    if missing:
        pytest.skip(missing)
    with emulators.datastore_emulator(index_file=INDEX_YAML) as emu:
        saved = {k: os.environ.get(k) for k in emu.env}
        os.environ.update(emu.env)
        yield emu
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[emulators.Emulator]:
    with emulators.gcs_emulator() as emu:
        saved = {k: os.environ.get(k) for k in emu.env}
        os.environ.update(emu.env)
        yield emu
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(params=["sqlite", "datastore"])
def record_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    """Each record backend, empty: SQLite in a fresh file, Datastore in a fresh namespace."""
    store: RecordStore
    if request.param == "sqlite":
        from dyff.stores.sqlite import SqliteRecordStore

        store = SqliteRecordStore(tmp_path / "records.db")
    else:
        request.getfixturevalue("datastore_emulator")
        from dyff.stores.datastore import DatastoreRecordStore

        store = DatastoreRecordStore("dyff-test", namespace=f"t{uuid.uuid4().hex}")
    yield store
    store.close()


@pytest.fixture(params=["file", "gcs"])
def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    """Each blob backend, empty: a fresh folder, or a fresh bucket in the GCS emulator."""
    store: BlobStore
    if request.param == "file":
        from dyff.stores.file import FileBlobStore

        store = FileBlobStore(tmp_path / "blobs")
    else:
        request.getfixturevalue("gcs_emulator")
        from dyff.stores.gcs import GcsBlobStore, make_client

        client = make_client()
        bucket = client.create_bucket(f"b{uuid.uuid4().hex[:20]}")
        store = GcsBlobStore(bucket.name, prefix="root", client=client)
    yield store
    store.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which backends the contract suites really ran against (not skipped)."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if "tests/contract/" not in nodeid or "[" not in nodeid:
                continue
            params = nodeid.rsplit("[", 1)[1].rstrip("]").split("-")
            backend = next((p for p in params if p in BACKENDS), None)
            if backend and (outcome != "passed" or report.when == "call"):
                counts.setdefault(backend, {}).setdefault(outcome, 0)
                counts[backend][outcome] += 1
    if counts:
        terminalreporter.section("contract suites by backend")
        for backend in BACKENDS:
            c = counts.get(backend, {})
            terminalreporter.write_line(
                f"{backend:>10} ({BACKENDS[backend]}): {c.get('passed', 0)} passed, "
                f"{c.get('failed', 0)} failed, {c.get('skipped', 0)} skipped"
            )


BACKENDS = {
    "sqlite": "SQLite file",
    "datastore": "Cloud Datastore emulator",
    "file": "local folder",
    "gcs": "GCS emulator",
}
