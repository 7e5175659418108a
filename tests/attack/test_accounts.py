"""Attacks on idempotency, upload tickets, accounts and keys of a real `dyff up`."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dyff import layout
from dyff.schema import Account, Model, UploadTicket, utcnow
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from tests.attack.conftest import Up, new_account, start_up, stop_up


def model_body(name: str, data: bytes, **spec: Any) -> dict[str, Any]:
    upload = {"sha256": hashlib.sha256(data).hexdigest(), "sizeBytes": len(data)}
    return {"name": name, "spec": {"source": {"form": "transformers", "upload": upload}, **spec}}


def dataset_body(name: str, data: bytes) -> dict[str, Any]:
    upload = {"sha256": hashlib.sha256(data).hexdigest(), "sizeBytes": len(data)}
    return {"name": name, "spec": {"source": {"form": "parquet", "upload": upload}}}


@pytest.fixture(scope="module")
def records(up: Up) -> Iterator[SqliteRecordStore]:
    """The target's own record store, read (and, to stage attacks, written) directly."""
    store = SqliteRecordStore(up.data_dir / "records.db")
    yield store
    store.close()


def blobs_of(up: Up) -> FileBlobStore:
    return FileBlobStore(up.data_dir / "blobs")


def tickets(records: SqliteRecordStore, account: str, name: str) -> list[UploadTicket]:
    return [t for t in records.list_all(UploadTicket, account) if t.spec.target_name == name]


def put(upload: dict[str, Any], data: bytes) -> httpx.Response:
    headers = {"X-Dyff-Upload-Token": upload["token"]}
    return httpx.put(upload["url"], content=data, headers=headers, timeout=30)


def eventually(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def concurrently(n: int, call: Callable[[], httpx.Response]) -> list[httpx.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: call(), range(n)))


# ------------------------------------------------------------- idempotency


@pytest.mark.parametrize("kind", ["models", "datasets"])
def test_fifty_concurrent_retries_get_one_answer_and_one_ticket(
    up: Up, records: SqliteRecordStore, kind: str
) -> None:
    acct = new_account(up)
    data = os.urandom(500)
    body = model_body("m", data) if kind == "models" else dataset_body("m", data)
    headers = {"Idempotency-Key": f"retry-{kind}"}
    with up.client(acct.key) as c:
        answers = concurrently(50, lambda: c.post(f"/v1/{kind}", json=body, headers=headers))
    assert {r.status_code for r in answers} == {201}, [r.text for r in answers[:3]]
    assert len({r.text for r in answers}) == 1  # the same body, ticket included
    assert len(tickets(records, acct.name, "m")) == 1
    upload = answers[0].json()["upload"]
    assert put(upload, data).status_code == 204
    assert put(upload, data).status_code == 409  # once


def test_fifty_concurrent_order_retries_get_one_answer(up: Up) -> None:
    acct = new_account(up)
    with up.client(acct.key) as c:
        assert c.post("/v1/models", json=model_body("m", b"w")).status_code == 201
        assert c.post("/v1/datasets", json=dataset_body("d", b"p")).status_code == 201
        body = {"spec": {"model": {"name": "m"}, "dataset": {"name": "d"}}}
        headers = {"Idempotency-Key": "order-1"}
        answers = concurrently(50, lambda: c.post("/v1/evaluations", json=body, headers=headers))
        assert {r.status_code for r in answers} == {201}, {r.status_code for r in answers}
        assert len({r.text for r in answers}) == 1
        assert len(c.get("/v1/evaluations").json()["items"]) == 1


def test_replayed_registration_returns_the_same_still_valid_ticket(
    up: Up, records: SqliteRecordStore
) -> None:
    acct = new_account(up)
    data = os.urandom(300)
    headers = {"Idempotency-Key": "once"}
    with up.client(acct.key) as c:
        first = c.post("/v1/models", json=model_body("m", data), headers=headers)
        replays = [c.post("/v1/models", json=model_body("m", data), headers=headers) for _ in "abc"]
    assert first.status_code == 201
    for again in replays:
        assert (again.status_code, again.json()) == (201, first.json())
    assert len(tickets(records, acct.name, "m")) == 1
    assert put(first.json()["upload"], data).status_code == 204  # the replays kept it valid


def test_own_account_spelled_or_not_is_one_evaluation(up: Up) -> None:
    acct = new_account(up)
    with up.client(acct.key) as c:
        assert c.post("/v1/models", json=model_body("m", b"w")).status_code == 201
        assert c.post("/v1/datasets", json=dataset_body("d", b"p")).status_code == 201
        spellings = [
            ({"name": "m"}, {"name": "d"}),
            ({"name": "m", "account": acct.name}, {"name": "d"}),
            ({"name": "m"}, {"name": "d", "account": acct.name}),
            ({"name": "m", "account": acct.name}, {"name": "d", "account": acct.name}),
        ]
        answers = [
            c.post("/v1/evaluations", json={"spec": {"model": m, "dataset": d}})
            for m, d in spellings
        ]
        assert [r.status_code for r in answers] == [201, 200, 200, 200], answers[-1].text
        assert len({r.json()["metadata"]["name"] for r in answers}) == 1
        assert len(c.get("/v1/evaluations").json()["items"]) == 1
        # A named order spelled the other way meets its record as the same spec.
        named = {"name": "mine", "spec": {"model": spellings[0][0], "dataset": {"name": "d"}}}
        assert c.post("/v1/evaluations", json=named).status_code == 201
        named["spec"]["model"] = spellings[1][0]
        assert c.post("/v1/evaluations", json=named).status_code == 200


# ----------------------------------------------------------------- tickets


def test_a_deleted_entitys_ticket_refuses_uploads_and_leaves_no_blob(
    up: Up, records: SqliteRecordStore
) -> None:
    acct = new_account(up)
    data = os.urandom(400)
    with up.client(acct.key) as c:
        upload = c.post("/v1/models", json=model_body("m", data)).json()["upload"]
        assert c.delete("/v1/models/m").status_code == 202
        refused = put(upload, data)
        assert refused.status_code in (404, 409), refused.text
        assert refused.json()["detail"]
        eventually(lambda: c.get("/v1/models/m").status_code == 404)
        assert put(upload, data).status_code == 404
    key = layout.upload_key(acct.name, "Model", "m", hashlib.sha256(data).hexdigest())
    assert not blobs_of(up).exists(key)
    assert tickets(records, acct.name, "m") == []


def test_renewing_an_upload_ticket(up: Up, records: SqliteRecordStore) -> None:
    acct = new_account(up)
    data = os.urandom(200)
    with up.client(acct.key) as c:
        old = c.post("/v1/models", json=model_body("m", data)).json()["upload"]
        ticket = tickets(records, acct.name, "m")[0]

        def expire(t: UploadTicket) -> None:
            t.spec.expires = utcnow() - timedelta(seconds=1)

        records.mutate(UploadTicket, acct.name, ticket.name, expire)
        assert put(old, data).status_code == 401  # expired
        assert c.post("/v1/models", json=model_body("m", data)).status_code == 409
        assert c.post("/v1/models/nope/upload").status_code == 404
        new = c.post("/v1/models/m/upload")
        assert new.status_code == 200, new.text
        fresh = new.json()
        assert fresh["token"] != old["token"]
        assert len(tickets(records, acct.name, "m")) == 1
        assert put(old, data).status_code == 401  # the old token stopped
        assert put(fresh, data).status_code == 204
        assert c.post("/v1/models/m/upload").status_code == 409  # uploaded: nothing to renew
        # Another account cannot renew it; a deleting or deleted one has none to renew.
        with up.client(new_account(up).key) as other:
            assert other.post("/v1/models/m/upload").status_code == 404
        assert c.post("/v1/datasets", json=dataset_body("d", b"p")).status_code == 201
        assert c.delete("/v1/datasets/d").status_code == 202
        assert c.post("/v1/datasets/d/upload").status_code in (404, 409)


def test_the_cli_resumes_an_upload(up: Up, tmp_path: Path) -> None:
    import subprocess
    import sys

    acct = new_account(up)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    from dyff.client import Client, ClientConfig, file_digest, pack_directory

    sha, size = file_digest(pack_directory(folder, tmp_path / "a.tar.gz"))
    assert file_digest(pack_directory(folder, tmp_path / "b.tar.gz")) == (sha, size)
    with Client(ClientConfig(up.url, acct.key)) as c:
        spec = {"source": {"form": "transformers", "upload": {"sha256": sha, "sizeBytes": size}}}
        c.create("models", {"name": "m", "spec": spec})
    env = {**os.environ, "DYFF_SERVER": up.url, "DYFF_API_KEY": acct.key}
    cli = [sys.executable, "-m", "dyff.cli", "--json", "models", "upload", "m"]
    (tmp_path / "other.bin").write_bytes(b"not what was declared")
    wrong = subprocess.run(
        [*cli, str(tmp_path / "other.bin")], env=env, capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "is not the upload" in wrong.stderr
    done = subprocess.run([*cli, str(folder)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    again = subprocess.run([*cli, str(folder)], env=env, capture_output=True, text=True)
    assert again.returncode == 1 and "409" in again.stderr


def test_dyff_up_honours_the_upload_ttl(tmp_path: Path) -> None:
    target = start_up(tmp_path, extra_env={"DYFF_UPLOAD_TTL_SECONDS": "120"})
    try:
        with target.client() as c:
            upload = c.post("/v1/models", json=model_body("m", b"w")).json()["upload"]
        left = datetime.fromisoformat(upload["expires"]) - utcnow()
        assert timedelta(seconds=100) < left <= timedelta(seconds=120)
    finally:
        stop_up(target)


# ------------------------------------------------------- accounts and keys


def test_deleting_an_account_revokes_its_keys_and_cascades(
    up: Up, records: SqliteRecordStore
) -> None:
    acct = new_account(up)
    with up.client(acct.key) as c:
        assert c.post("/v1/models", json=model_body("m", b"w")).status_code == 201
        assert c.post("/v1/datasets", json=dataset_body("d", b"p")).status_code == 201
        order = {"spec": {"model": {"name": "m"}, "dataset": {"name": "d"}}}
        assert c.post("/v1/evaluations", json=order).status_code == 201
        second = c.post("/v1/keys", json={"expiresInDays": 1}).json()["token"]
        assert c.get("/v1/models").status_code == 200  # cached by the authenticator now
    with up.client(acct.key) as c:
        assert c.delete(f"/v1/accounts/{acct.name}").status_code == 403  # admins only
    with up.client(up.admin_key) as admin:
        assert admin.delete("/v1/accounts/nobody").status_code == 404
        r = admin.delete(f"/v1/accounts/{acct.name}")
        assert r.status_code == 202, r.text
        assert r.json()["keysRevoked"] == 2 and r.json()["entitiesDeleting"] == 3
    for key in (acct.key, second):  # at once, despite the auth cache
        with up.client(key) as c:
            assert c.get("/v1/models").status_code == 401
    eventually(lambda: records.find(Account, acct.name, acct.name) is None)
    assert records.list_all(Model, acct.name) == []
    assert records.list_all(UploadTicket, acct.name) == []
    with up.client(up.admin_key) as admin:  # the name is free again; old keys stay dead
        assert admin.post("/v1/accounts", json={"name": acct.name}).status_code == 201
    with up.client(acct.key) as c:
        assert c.get("/v1/models").status_code == 401


def test_a_key_whose_account_record_is_gone_stops_working(
    up: Up, records: SqliteRecordStore
) -> None:
    acct = new_account(up)
    records.delete(Account, acct.name, acct.name)
    with up.client(acct.key) as c:
        assert c.get("/v1/models").status_code == 401


def test_a_new_key_expires_no_later_than_the_callers(up: Up) -> None:
    acct = new_account(up)
    with up.client(acct.key) as c:
        mine = next(k for k in c.get("/v1/keys").json() if not k["revoked"])
        limit = datetime.fromisoformat(mine["expires"])
        never = c.post("/v1/keys", json={"expiresInDays": None})
        assert never.status_code == 403, never.text
        long = c.post("/v1/keys", json={"expiresInDays": 3650})
        assert long.status_code == 201
        assert datetime.fromisoformat(long.json()["key"]["expires"]) <= limit
        # A key minted by that key is capped the same way, and works.
        with up.client(long.json()["token"]) as c2:
            child = c2.post("/v1/keys", json={"expiresInDays": 3650}).json()
            assert datetime.fromisoformat(child["key"]["expires"]) <= limit
        short = c.post("/v1/keys", json={"expiresInDays": 1}).json()["key"]["expires"]
        assert datetime.fromisoformat(short) < utcnow() + timedelta(days=1, minutes=1)
    with up.client(up.admin_key) as admin:
        forever = admin.post("/v1/keys", json={"expiresInDays": None})
        assert forever.status_code == 201 and forever.json()["key"].get("expires") is None


# ------------------------------------------- comparisons, leaderboards, web view


def test_comparisons_leaderboards_and_web_pages_answer_404_across_accounts(up: Up) -> None:
    """The new routes and pages join the cross-account matrix: the owner is told what its
    evaluations are (409: not Complete), another account only that nothing is there."""
    owner, other = new_account(up), new_account(up)
    with up.client(owner.key) as c:
        assert c.post("/v1/models", json=model_body("m", b"w")).status_code == 201
        assert c.post("/v1/datasets", json=dataset_body("d", b"p")).status_code == 201
        for name in ("e1", "e2"):
            body = {"name": name, "spec": {"model": {"name": "m"}, "dataset": {"name": "d"}}}
            assert c.post("/v1/evaluations", json=body).status_code == 201
        pair = {"a": "e1", "b": "e2"}
        assert c.get("/v1/comparisons", params=pair).status_code == 409
        assert c.get("/v1/datasets/d/leaderboard").json()["entries"] == []
    matrix = [
        ("/v1/comparisons", pair),
        ("/v1/comparisons/rows", pair),
        ("/v1/comparisons/report", pair),
        ("/v1/datasets/d/leaderboard", {}),
        ("/v1/datasets/d/leaderboard", {"account": owner.name}),
    ]
    with up.client(other.key) as c:
        for path, params in matrix:
            r = c.get(path, params=params)
            assert r.status_code == 404, (path, params, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
    with httpx.Client(base_url=up.url, timeout=30) as browser:
        login = browser.get("/ui/login")
        csrf = login.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        r = browser.post("/ui/login", data={"key": other.key, "csrf": csrf})
        assert r.status_code == 303, r.text
        for path in ("/ui/evaluations/e1", "/ui/evaluations/e1/report",
                     "/ui/evaluations/e1/delete", "/ui/models/m/delete",
                     "/ui/datasets/d/leaderboard", "/ui/compare?a=e1&b=e2"):  # fmt: skip
            assert browser.get(path).status_code == 404, path
        assert browser.post("/ui/evaluations/e1/delete", data={"csrf": csrf}).status_code == 404
        assert 'data-name="e1"' not in browser.get("/ui").text
    with up.client(owner.key) as c:
        assert c.get("/v1/evaluations/e1").json()["metadata"].get("deletionTimestamp") is None
