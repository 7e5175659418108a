"""Schemathesis against /openapi.json: generated requests, positive and negative, on every
operation; no server error, and every answer conforms to the documented schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api_shim.app import create_app
from dyff import accounts
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from tests.shim.conftest import serve

pytestmark = pytest.mark.slow

EXAMPLES_PER_MODE = 45  # x 2 modes x ~16 operations > 1,000 requests
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    records = SqliteRecordStore(tmp / "records.db")
    blobs = FileBlobStore(tmp / "blobs")
    # Something for generated ids to find: a user with a model, dataset, evaluation.
    accounts.create_account(records, "fuzz")
    token, _ = accounts.mint_key(records, "fuzz")
    with serve(create_app(records, blobs, cache_dir=tmp / "cache")) as url:
        import httpx

        h = {"Authorization": f"Bearer {token}"}
        sha = "a" * 64
        src = {"upload": {"sha256": sha, "sizeBytes": 1}}
        httpx.post(
            f"{url}/v1/models",
            headers=h,
            json={"name": "m", "spec": {"source": {"form": "transformers", **src}}},
        )
        httpx.post(
            f"{url}/v1/datasets",
            headers=h,
            json={"name": "d", "spec": {"source": {"form": "parquet", **src}}},
        )
        httpx.post(
            f"{url}/v1/evaluations",
            headers=h,
            json={"spec": {"model": {"name": "m"}, "dataset": {"name": "d"}}},
        )
        yield url, token


def test_generated_requests_cause_no_server_error(live: tuple[str, str]) -> None:
    url, token = live
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    auth = {"Authorization": f"Bearer {token}"}
    sent = 0
    failures: list[str] = []
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15

    def fuzz(operation: Any, mode: GenerationMode) -> None:
        @settings(
            max_examples=EXAMPLES_PER_MODE,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            nonlocal sent
            response = case.call(base_url=url, headers=auth)
            sent += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=auth)
            except BaseException as exc:  # collect, so one run reports every operation
                failures.append(f"{operation.label} [{mode.value}]: {exc}"[:2000])

        try:
            run()
        except Unsatisfiable:
            assert mode == GenerationMode.NEGATIVE  # nothing to break, e.g. /healthz

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode)
    assert not failures, "\n\n".join(failures[:5])
    assert sent >= 1000, sent
