"""The HTTP API over real HTTP, on both record and both blob backends."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import polars as pl
import pytest

from dyff import accounts, layout
from dyff.schema import ApiKey, Dataset, Evaluation, Model, utcnow
from dyff.stores.file import FileBlobStore
from tests.shim.conftest import Shim

PROBLEM = "application/problem+json"


def model_body(name: str, data: bytes = b"weights", **extra: Any) -> dict[str, Any]:
    source = {
        "form": "transformers",
        "upload": {"sha256": hashlib.sha256(data).hexdigest(), "sizeBytes": len(data)},
    }
    return {"name": name, "spec": {"source": source, **extra}}


def dataset_body(name: str, data: bytes = b"parquet", **extra: Any) -> dict[str, Any]:
    source = {
        "form": "parquet",
        "upload": {"sha256": hashlib.sha256(data).hexdigest(), "sizeBytes": len(data)},
    }
    return {"name": name, "spec": {"source": source, **extra}}


def order(model: str = "m", dataset: str = "d", **extra: Any) -> dict[str, Any]:
    return {"spec": {"model": {"name": model}, "dataset": {"name": dataset}, **extra}}


def setup_pair(shim: Shim, token: str, public: bool = False) -> None:
    with shim.client(token) as c:
        assert c.post("/v1/models", json=model_body("m", public=public)).status_code == 201
        assert c.post("/v1/datasets", json=dataset_body("d", public=public)).status_code == 201


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    doc: dict[str, Any] = response.json()
    assert doc["status"] == status and doc["title"]
    assert "Traceback" not in response.text
    if field is not None:
        assert doc["field"] == field, doc
    return doc


# ------------------------------------------------------------------ auth


def test_requests_without_a_valid_key_are_401(shim: Shim) -> None:
    with shim.client() as c:
        assert_problem(c.get("/v1/models"), 401)
    with shim.client("dyff.admin.kdeadbeef.secret") as c:
        assert_problem(c.get("/v1/models"), 401)
    with shim.client("not-a-token") as c:
        assert_problem(c.get("/v1/models"), 401)


def test_revoked_and_expired_keys_stop_working(shim: Shim) -> None:
    account, token = shim.new_account()
    with shim.client(token) as c:
        second = c.post("/v1/keys", json={"expiresInDays": 1}).json()
        assert second["token"] != token
        with shim.client(second["token"]) as c2:
            assert c2.get("/v1/models").status_code == 200
        assert c.delete(f"/v1/keys/{second['key']['id']}").json()["revoked"] is True
        with shim.client(second["token"]) as c2:
            assert "revoked" in assert_problem(c2.get("/v1/models"), 401)["detail"]
    expired, _ = accounts.mint_key(shim.records, account, expires_in=timedelta(seconds=-1))
    with shim.client(expired) as c:
        assert "expired" in assert_problem(c.get("/v1/models"), 401)["detail"]


def test_only_hashes_of_secrets_are_stored(shim: Shim) -> None:
    account, token = shim.new_account()
    secret = token.rsplit(".", 1)[1]
    for key in shim.records.list_all(ApiKey, account):
        assert secret not in json.dumps(key.wire())
        assert key.spec.secret_hash == hashlib.sha256(secret.encode()).hexdigest()


def test_only_admins_create_accounts(shim: Shim) -> None:
    _, token = shim.new_account()
    with shim.client(token) as c:
        assert_problem(c.post("/v1/accounts", json={"name": "sneaky"}), 403)


# ------------------------------------------------------- models, datasets


def test_register_model_then_upload_once(shim: Shim) -> None:
    account, token = shim.new_account()
    data = os.urandom(3000)
    with shim.client(token) as c:
        r = c.post("/v1/models", json=model_body("m1", data))
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["item"]["metadata"]["namespace"] == account
        upload = created["upload"]
        assert upload["method"] == "PUT" and upload["token"]
        headers = {"X-Dyff-Upload-Token": upload["token"]}
        put = c.put(upload["url"], content=data, headers=headers)
        assert put.status_code == 204, put.text
        key = layout.upload_key(account, "Model", "m1", hashlib.sha256(data).hexdigest())
        assert shim.blobs.get(key) == data
        assert_problem(c.put(upload["url"], content=data, headers=headers), 409, "token")


@pytest.mark.parametrize(
    ("sent", "status", "field"),
    [
        (b"x" * 2999 + b"y", 422, "sha256"),  # same size, other bytes
        (b"x" * 2999, 422, "sizeBytes"),  # short
        (b"x" * 3001, 413, "sizeBytes"),  # long
    ],
)
def test_bad_uploads_store_nothing(shim: Shim, sent: bytes, status: int, field: str) -> None:
    account, token = shim.new_account()
    data = b"x" * 3000
    with shim.client(token) as c:
        upload = c.post("/v1/models", json=model_body("m1", data)).json()["upload"]
        headers = {"X-Dyff-Upload-Token": upload["token"]}
        assert_problem(c.put(upload["url"], content=sent, headers=headers), status, field)
        assert list(shim.blobs.list(layout.account_prefix(account) + "/")) == []
        # The ticket is still good for the right bytes.
        assert c.put(upload["url"], content=data, headers=headers).status_code == 204


def test_forged_and_expired_upload_tokens_are_refused(shim: Shim) -> None:
    account, token = shim.new_account()
    with shim.client(token) as c:
        upload = c.post("/v1/models", json=model_body("m1")).json()["upload"]
        forged = {"X-Dyff-Upload-Token": "A" * 43}
        assert_problem(c.put(upload["url"], content=b"weights", headers=forged), 401)
        ticket_id = upload["url"].rsplit("/", 1)[1]
        from dyff.schema import UploadTicket

        def expire(t: UploadTicket) -> None:
            t.spec.expires = utcnow() - timedelta(seconds=1)

        shim.records.mutate(UploadTicket, account, ticket_id, expire)
        good = {"X-Dyff-Upload-Token": upload["token"]}
        doc = assert_problem(c.put(upload["url"], content=b"weights", headers=good), 401)
        assert "expired" in doc["detail"]
        assert list(shim.blobs.list(layout.account_prefix(account) + "/")) == []


def test_duplicate_model_is_409_and_invalid_body_names_the_field(shim: Shim) -> None:
    _, token = shim.new_account()
    with shim.client(token) as c:
        assert c.post("/v1/models", json=model_body("m1")).status_code == 201
        assert_problem(c.post("/v1/models", json=model_body("m1")), 409, "metadata.name")
        bad = model_body("m2")
        bad["spec"]["source"]["upload"]["sha256"] = "nope"
        assert_problem(c.post("/v1/models", json=bad), 422, "spec.source.upload.sha256")
        both = model_body("m3")
        both["spec"]["source"]["uri"] = {"uri": "gs://b/x", "sha256": "0" * 64}
        doc = assert_problem(c.post("/v1/models", json=both), 422, "spec.source")
        assert "exactly one of upload, uri, image" in doc["detail"]
        image = {
            "name": "m4",
            "spec": {
                "source": {"form": "image", "image": {"reference": "registry.example/m:latest"}}
            },
        }
        doc = assert_problem(c.post("/v1/models", json=image), 422, "spec.source.image")
        assert "pinned by digest" in doc["detail"]
        assert c.get("/v1/models/m2").status_code == 404


def test_idempotency_key_replays_the_first_answer(shim: Shim) -> None:
    _, token = shim.new_account()
    with shim.client(token) as c:
        headers = {"Idempotency-Key": "retry-1"}
        first = c.post("/v1/models", json=model_body("m1"), headers=headers)
        again = c.post("/v1/models", json=model_body("m1"), headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json()["item"]["metadata"]["uid"] == again.json()["item"]["metadata"]["uid"]
        other = c.post("/v1/models", json=model_body("m2"), headers=headers)
        assert_problem(other, 422, "Idempotency-Key")


def test_an_idempotency_key_is_remembered_for_a_day_only(
    shim: Shim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within IDEMPOTENCY_TTL a retry replays; after it the key is free: the same key with
    another request runs, and the stale record is gone."""
    from api_shim import idempotency
    from dyff.schema import IDEMPOTENCY_TTL, utcnow

    _, token = shim.new_account()
    with shim.client(token) as c:
        headers = {"Idempotency-Key": "daily"}
        assert c.post("/v1/models", json=model_body("m1"), headers=headers).status_code == 201
        later = utcnow() + IDEMPOTENCY_TTL + timedelta(minutes=1)
        monkeypatch.setattr(idempotency, "utcnow", lambda: later)
        reused = c.post("/v1/models", json=model_body("m2"), headers=headers)
        assert reused.status_code == 201, reused.text
        assert reused.json()["item"]["metadata"]["name"] == "m2"
        monkeypatch.undo()  # back to now: the new answer is replayed
        again = c.post("/v1/models", json=model_body("m2"), headers=headers)
        assert again.json()["item"]["metadata"]["uid"] == reused.json()["item"]["metadata"]["uid"]


def test_list_filters_and_pages(shim: Shim) -> None:
    account, token = shim.new_account()
    with shim.client(token) as c:
        for i in range(5):
            body = {**model_body(f"m{i}"), "labels": {"team": "a" if i < 2 else "b"}}
            assert c.post("/v1/models", json=body).status_code == 201
        shim.records.mutate(Model, account, "m3", lambda m: setattr(m.status, "phase", "Ready"))
        names, token_ = [], None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"pageToken": token_} if token_ else {})}
            page = c.get("/v1/models", params=params).json()
            names += [m["metadata"]["name"] for m in page["items"]]
            token_ = page.get("nextPageToken")
            if not token_:
                break
        assert names == [f"m{i}" for i in range(5)]
        team_a = c.get("/v1/models", params={"label": "team=a"}).json()["items"]
        assert [m["metadata"]["name"] for m in team_a] == ["m0", "m1"]
        ready = c.get("/v1/models", params={"phase": "Ready", "label": "team=b"}).json()["items"]
        assert [m["metadata"]["name"] for m in ready] == ["m3"]
        assert_problem(c.get("/v1/models", params={"label": "nokey"}), 422, "label")
        assert_problem(c.get("/v1/models", params={"pageToken": "!!"}), 422, "pageToken")


# ------------------------------------------------------------ evaluations


def test_ordering_the_same_evaluation_answers_with_it(shim: Shim) -> None:
    _, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        first = c.post("/v1/evaluations", json=order())
        assert first.status_code == 201, first.text
        name = first.json()["metadata"]["name"]
        # Scheduling settings do not make it another evaluation.
        again = c.post("/v1/evaluations", json=order(run={"batchSize": 8}))
        assert again.status_code == 200 and again.json()["metadata"]["name"] == name
        other = c.post("/v1/evaluations", json=order(inference={"topK": 3}))
        assert other.status_code == 201 and other.json()["metadata"]["name"] != name
        named = c.post("/v1/evaluations", json={**order(), "name": "mine"})
        assert named.status_code == 201
        clash = c.post("/v1/evaluations", json={**order(inference={"topK": 2}), "name": "mine"})
        assert_problem(clash, 409, "name")


def test_a_failed_evaluation_is_restarted(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        first = c.post("/v1/evaluations", json=order()).json()
        name = first["metadata"]["name"]

        def fail(e: Evaluation) -> None:
            e.status.phase = "Failed"
            e.status.message = "model server crashed"

        shim.records.mutate(Evaluation, account, name, fail)
        again = c.post("/v1/evaluations", json=order())
        assert again.status_code == 200
        doc = again.json()
        assert doc["metadata"]["uid"] == first["metadata"]["uid"]
        assert doc["metadata"]["generation"] == first["metadata"]["generation"] + 1
        assert doc["status"].get("phase") is None


def test_evaluation_needs_a_usable_model_and_dataset(shim: Shim) -> None:
    _, token = shim.new_account()
    with shim.client(token) as c:
        assert_problem(c.post("/v1/evaluations", json=order()), 422, "spec.model.name")
        assert c.post("/v1/models", json=model_body("m")).status_code == 201
        assert_problem(c.post("/v1/evaluations", json=order()), 422, "spec.dataset.name")


def test_hundred_concurrent_identical_orders_make_one_evaluation(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)

    def post(_: int) -> tuple[int, str]:
        with shim.client(token) as c:
            r = c.post("/v1/evaluations", json=order())
            return r.status_code, r.json()["metadata"]["uid"]

    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(post, range(100)))
    statuses = sorted(s for s, _ in answers)
    assert statuses.count(201) == 1 and statuses.count(200) == 99, statuses
    assert len({uid for _, uid in answers}) == 1
    assert len(shim.records.list_all(Evaluation, account)) == 1


def test_delete_is_202_and_refused_while_in_use(shim: Shim) -> None:
    _, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        name = c.post("/v1/evaluations", json=order()).json()["metadata"]["name"]
        assert_problem(c.delete("/v1/models/m"), 409, "cascade")
        r = c.delete("/v1/models/m", params={"cascade": "true"})
        assert r.status_code == 202 and r.json()["metadata"]["deletionTimestamp"]
        assert c.get(f"/v1/evaluations/{name}").json()["metadata"]["deletionTimestamp"]
        assert c.delete("/v1/datasets/d").status_code == 202  # its evaluation is going already
        assert_problem(c.delete("/v1/models/nope"), 404)


# ------------------------------------------------------- account isolation


def test_cross_account_matrix_is_404_everywhere(shim: Shim) -> None:
    """Every endpoint, called with another account's ids, answers 404 (or, for an order
    naming them, the same 'not found' as for ids that do not exist)."""
    owner, owner_token = shim.new_account()
    _, other_token = shim.new_account()
    setup_pair(shim, owner_token)
    with shim.client(owner_token) as c:
        eval_name = c.post("/v1/evaluations", json=order()).json()["metadata"]["name"]
    ids = {"models": "m", "datasets": "d", "evaluations": eval_name}
    with shim.client(other_token) as c:
        for plural, name in ids.items():
            assert_problem(c.get(f"/v1/{plural}/{name}"), 404)
            assert_problem(c.get(f"/v1/{plural}/{name}", params={"account": owner}), 404)
            assert_problem(c.delete(f"/v1/{plural}/{name}"), 404)
            assert c.get(f"/v1/{plural}").json()["items"] == []
        assert_problem(c.get(f"/v1/evaluations/{eval_name}/metrics"), 404)
        assert_problem(c.get(f"/v1/evaluations/{eval_name}/predictions"), 404)
        assert_problem(c.get(f"/v1/evaluations/{eval_name}/report"), 404)
        cross = {
            "spec": {
                "model": {"name": "m", "account": owner},
                "dataset": {"name": "d", "account": owner},
            }
        }
        doc = assert_problem(c.post("/v1/evaluations", json=cross), 422, "spec.model.name")
        assert "not found or not usable" in doc["detail"]
        assert_problem(c.delete("/v1/keys/kdoesnotexist"), 404)
    with shim.client(owner_token) as c:
        assert c.get(f"/v1/evaluations/{eval_name}").status_code == 200


def test_public_entities_are_readable_and_usable_by_all(shim: Shim) -> None:
    owner, owner_token = shim.new_account()
    other, other_token = shim.new_account()
    setup_pair(shim, owner_token, public=True)
    with shim.client(other_token) as c:
        got = c.get("/v1/models/m", params={"account": owner})
        assert got.status_code == 200 and got.json()["metadata"]["namespace"] == owner
        assert_problem(c.delete("/v1/models/m"), 404)  # readable, not deletable
        body = {
            "spec": {
                "model": {"name": "m", "account": owner},
                "dataset": {"name": "d", "account": owner},
            }
        }
        r = c.post("/v1/evaluations", json=body)
        assert r.status_code == 201 and r.json()["metadata"]["namespace"] == other
        assert c.get("/v1/models").json()["items"] == []  # lists show only one's own


# ------------------------------------------------------------------ results


def complete_with_results(shim: Shim, account: str, name: str, rows: int = 50) -> None:
    evaluation = shim.records.get(Evaluation, account, name)
    uid = evaluation.metadata.uid or ""
    labels = [i % 5 for i in range(rows)]
    predicted = [(i * 7) % 5 for i in range(rows)]
    frame = pl.DataFrame(
        {
            "row_id": list(range(rows)),
            "label": labels,
            "predicted": predicted,
            "score": [0.5 + (i % 10) / 20 for i in range(rows)],
            "correct": [a == b for a, b in zip(labels, predicted, strict=True)],
            "topk_labels": [[p, (p + 1) % 5] for p in predicted],
            "topk_scores": [[0.9, 0.1]] * rows,
        },
        schema=__import__("dyff.results", fromlist=["PREDICTION_SCHEMA"]).PREDICTION_SCHEMA,
    )
    key = f"{layout.evaluation_prefix(account, name, uid)}/part-0.parquet"
    path = shim.blobs.path(key) if isinstance(shim.blobs, FileBlobStore) else None
    import io

    buf = io.BytesIO()
    frame.write_parquet(buf)
    shim.blobs.put(key, buf.getvalue())
    assert path is None or path.exists()
    shim.blobs.put(layout.manifest_key(account, name, uid), json.dumps({"files": [key]}).encode())
    shim.blobs.put(layout.metrics_key(account, name, uid), json.dumps({"accuracy": 0.2}).encode())

    def complete(e: Evaluation) -> None:
        e.status.phase = "Complete"

    shim.records.mutate(Evaluation, account, name, complete)


def test_metrics_and_structured_prediction_queries(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        name = c.post("/v1/evaluations", json=order()).json()["metadata"]["name"]
        assert_problem(c.get(f"/v1/evaluations/{name}/metrics"), 409, "status.phase")
        complete_with_results(shim, account, name)
        assert c.get(f"/v1/evaluations/{name}/metrics").json() == {"accuracy": 0.2}
        report = c.get(f"/v1/evaluations/{name}/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert 'id="metrics-table"' in report.text and "<script" not in report.text
        wrong = c.get(
            f"/v1/evaluations/{name}/predictions",
            params={"correct": "false", "label": 3, "limit": 5},
        ).json()
        expected = sum(1 for i in range(50) if i % 5 == 3 and (i * 7) % 5 != 3)
        assert wrong["total"] == expected and len(wrong["rows"]) == 5
        assert all(r["label"] == 3 and not r["correct"] for r in wrong["rows"])
        top = c.get(
            f"/v1/evaluations/{name}/predictions",
            params={"order": "score_desc", "limit": 3, "columns": ["row_id", "score"]},
        )
        rows = top.json()["rows"]
        assert [set(r) for r in rows] == [{"row_id", "score"}] * 3
        assert rows[0]["score"] >= rows[1]["score"] >= rows[2]["score"]
        bad = c.get(f"/v1/evaluations/{name}/predictions", params={"limit": 0})
        assert_problem(bad, 422, "query.limit")
        sql = c.get(f"/v1/evaluations/{name}/predictions", params={"columns": "1; DROP"})
        assert_problem(sql, 422)


# ------------------------------------------------------------------ labels

DIGITS = [str(i) for i in range(10)]
DEFAULTS = [f"LABEL_{i}" for i in range(10)]


def make_ready(shim: Shim, account: str, kind: Any, name: str, labels: list[str] | None) -> None:
    """As ingestion leaves a model or dataset: Ready, with its labels recorded."""

    def ready(entity: Any) -> None:
        entity.status.phase = "Ready"
        entity.status.labels = labels
        entity.status.set_condition("Ready", "True", "Ready", "", entity.metadata.generation)

    shim.records.mutate(kind, account, name, ready)


def test_a_label_mismatch_is_refused_naming_both_label_sets(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    make_ready(shim, account, Model, "m", DEFAULTS)
    make_ready(shim, account, Dataset, "d", DIGITS)
    with shim.client(token) as c:
        doc = assert_problem(c.post("/v1/evaluations", json=order()), 422, "spec.model")
        assert "LabelMismatch" in doc["detail"]
        assert "'LABEL_0'" in doc["detail"] and "'0'" in doc["detail"]
        assert doc["errors"][0]["field"] == "spec.model"
        bad_map = order(labelMapping={"map": {"LABEL_0": "zero"}})
        doc = assert_problem(c.post("/v1/evaluations", json=bad_map), 422, "spec.labelMapping")
        assert "'zero'" in doc["detail"] and "'LABEL_0'" in doc["detail"]
        counts = order(labelMapping={"byIndex": True})
        make_ready(shim, account, Model, "m", DEFAULTS[:3])
        doc = assert_problem(c.post("/v1/evaluations", json=counts), 422, "spec.labelMapping")
        assert "as many" in doc["detail"]
        both = order(labelMapping={"byIndex": True, "map": {"LABEL_0": "0"}})
        assert_problem(c.post("/v1/evaluations", json=both), 422, "spec.labelMapping")
        assert shim.records.list_all(Evaluation, account) == []


def test_an_explicit_mapping_is_accepted_and_is_another_evaluation(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    make_ready(shim, account, Model, "m", DEFAULTS)
    make_ready(shim, account, Dataset, "d", DIGITS)
    with shim.client(token) as c:
        first = c.post("/v1/evaluations", json=order(labelMapping={"byIndex": True}))
        assert first.status_code == 201, first.text
        assert first.json()["spec"]["labelMapping"] == {"byIndex": True}
        mapping = {f"LABEL_{i}": str(9 - i) for i in range(10)}
        second = c.post("/v1/evaluations", json=order(labelMapping={"map": mapping}))
        assert second.status_code == 201, second.text
        assert second.json()["metadata"]["name"] != first.json()["metadata"]["name"]


def test_orders_before_ready_are_taken_and_partial_overlap_is_allowed(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        # Labels not known yet: the controller checks them later.
        make_ready(shim, account, Dataset, "d", DIGITS)
        assert c.post("/v1/evaluations", json={**order(), "name": "early"}).status_code == 201
        make_ready(shim, account, Model, "m", ["0", "1", "cat"])
        assert c.post("/v1/evaluations", json={**order(), "name": "part"}).status_code == 201


def test_predictions_carry_label_names(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        name = c.post("/v1/evaluations", json=order()).json()["metadata"]["name"]
        complete_with_results(shim, account, name)
        evaluation = shim.records.get(Evaluation, account, name)
        key = layout.metrics_key(account, name, evaluation.metadata.uid or "")
        doc = {"labels": ["a", "b", "c", "d"], "extraLabels": ["z"], "accuracy": 0.2}
        shim.blobs.put(key, json.dumps(doc).encode())
        page = c.get(f"/v1/evaluations/{name}/predictions", params={"limit": 2}).json()
        assert page["labels"] == ["a", "b", "c", "d", "z"]


def test_results_of_a_deleting_evaluation_are_409_never_5xx(shim: Shim) -> None:
    """Found by the soak bench: results read while the evaluation is deleted (its files
    going) answered 500. A deleting evaluation's results are a 409, and so is a result
    file that vanishes under a reader."""
    account, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        name = c.post("/v1/evaluations", json=order()).json()["metadata"]["name"]
        complete_with_results(shim, account, name)
        routes = [f"/v1/evaluations/{name}/{what}" for what in ("metrics", "predictions")]
        assert all(c.get(route).status_code == 200 for route in routes)
        # The result file disappears (a cleanup racing this reader).
        evaluation = shim.records.get(Evaluation, account, name)
        manifest = layout.manifest_key(account, name, evaluation.metadata.uid or "")
        for key in json.loads(shim.blobs.get(manifest))["files"]:
            shim.blobs.delete(key)
        if isinstance(shim.blobs, FileBlobStore):
            assert_problem(c.get(routes[1]), 409, "metadata.deletionTimestamp")
        else:  # read through the local cache of immutable result files: still whole
            assert c.get(routes[1]).status_code == 200
        # The deletion mark: every results route answers 409 before touching a file.
        shim.records.mark_deleting(Evaluation, account, name)
        for route in [*routes, f"/v1/evaluations/{name}/report"]:
            assert_problem(c.get(route), 409, "metadata.deletionTimestamp")


# ------------------------------------------------------------------- ops


def test_health_metrics_openapi_and_request_ids(shim: Shim) -> None:
    with shim.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/healthz", headers={"X-Request-Id": "abc123"})
        assert r.headers["X-Request-Id"] == "abc123"
        spec = c.get("/openapi.json").json()
        assert "/v1/evaluations" in spec["paths"] and "Problem" in spec["components"]["schemas"]
        assert c.get("/docs").status_code == 200
        text = c.get("/metrics").text
        assert 'dyff_http_requests_total{method="GET",route="/healthz",status="200"}' in text
        assert "dyff_http_request_duration_seconds_bucket" in text


def test_an_upload_to_a_deleting_model_is_refused_and_stores_nothing(shim: Shim) -> None:
    account, token = shim.new_account()
    data = os.urandom(100)
    with shim.client(token) as c:
        upload = c.post("/v1/models", json=model_body("m1", data)).json()["upload"]
        assert c.delete("/v1/models/m1").status_code == 202  # no controller: stays deleting
        headers = {"X-Dyff-Upload-Token": upload["token"]}
        doc = assert_problem(c.put(upload["url"], content=data, headers=headers), 409, "token")
        assert "being deleted" in doc["detail"]
        assert_problem(c.post("/v1/models/m1/upload"), 409)
        unknown = upload["url"].rsplit("/", 1)[0] + "/u000000000000000000000000"
        assert_problem(c.put(unknown, content=data, headers=headers), 404, "ticket")
    key = layout.upload_key(account, "Model", "m1", hashlib.sha256(data).hexdigest())
    assert not shim.blobs.exists(key)


def test_deleting_an_empty_account_removes_it_at_once(shim: Shim) -> None:
    from dyff.schema import Account

    account, token = shim.new_account()
    with shim.client(token) as c:
        assert c.get("/v1/models").status_code == 200  # cached
    with shim.client(shim.admin_token) as admin:
        r = admin.delete(f"/v1/accounts/{account}")
        assert r.status_code == 202 and r.json()["finished"] is True, r.text
        assert_problem(admin.delete("/v1/accounts/admin"), 409, "name")  # not its own
    assert shim.records.find(Account, account, account) is None
    assert shim.records.list_all(ApiKey, account) == []
    with shim.client(token) as c:
        assert_problem(c.get("/v1/models"), 401)


def test_entities_owned_by_git_are_read_only_through_the_api(shim: Shim) -> None:
    """A Model applied as a CR by Argo CD, and a failed Evaluation applied by kubectl: the
    API reads them, but delete and restart answer 409 naming who owns them."""
    from controller.sync import adopt
    from dyff.lifecycle import EvaluationPhase

    account, token = shim.new_account()
    source = {"form": "transformers", "uri": {"uri": "gs://b/m", "sha256": "0" * 64}}
    meta = {"namespace": account, "generation": 1}
    tracking = {"argocd.argoproj.io/tracking-id": "team-a:dyff.io/Model:x/m1"}
    model = {
        "metadata": {"name": "m1", "annotations": tracking, **meta},
        "spec": {"source": source},
    }
    adopt(shim.records, Model, {"apiVersion": "dyff.io/v1alpha1", "kind": "Model", **model})
    spec = {"model": {"name": "m1"}, "dataset": {"name": "d1"}}
    evaluation = {"metadata": {"name": "e1", **meta}, "spec": spec}
    adopt(
        shim.records,
        Evaluation,
        {"apiVersion": "dyff.io/v1alpha1", "kind": "Evaluation", **evaluation},
    )
    shim.records.mutate(
        Evaluation, account, "e1", lambda e: setattr(e.status, "phase", EvaluationPhase.FAILED)
    )
    with shim.client(token) as c:
        assert c.get("/v1/models/m1").status_code == 200
        refused = c.delete("/v1/models/m1")
        assert refused.status_code == 409 and "Argo CD application team-a" in refused.text
        refused = c.post("/v1/evaluations", json={"name": "e1", "spec": spec})
        assert refused.status_code == 409 and "kubectl or GitOps" in refused.text
        assert c.delete("/v1/evaluations/e1").status_code == 409
    assert shim.records.get(Model, account, "m1").metadata.deletion_timestamp is None
    assert shim.records.get(Evaluation, account, "e1").phase == EvaluationPhase.FAILED


def test_a_long_poll_answers_as_soon_as_the_entity_changes(shim: Shim) -> None:
    """`GET …?changedFrom=V&wait=S`: at once when the version is no longer V, else after
    S seconds with the entity as it is; S is bounded."""
    import threading
    import time

    account, token = shim.new_account()
    with shim.client(token) as c:
        created = c.post("/v1/models", json=model_body("m1")).json()["item"]
        version = created["metadata"]["resourceVersion"]
        started = time.monotonic()
        same = c.get("/v1/models/m1", params={"changedFrom": version, "wait": 1})
        assert same.status_code == 200 and 0.9 < time.monotonic() - started < 5
        assert same.json()["metadata"]["resourceVersion"] == version

        def write_later() -> None:
            time.sleep(0.5)
            shim.records.mutate(Model, account, "m1", lambda m: m.metadata.labels.update(x="1"))

        threading.Thread(target=write_later).start()
        started = time.monotonic()
        changed = c.get("/v1/models/m1", params={"changedFrom": version, "wait": 20})
        took = time.monotonic() - started
        assert changed.json()["metadata"]["labels"] == {"x": "1"}
        assert 0.4 < took < 3, took
        too_long = c.get("/v1/models/m1", params={"changedFrom": version, "wait": 31})
        assert_problem(too_long, 422, "query.wait")


def test_criteria_naming_a_column_the_dataset_lacks_are_refused_at_order(shim: Shim) -> None:
    """Slices and gates name attribute columns: once the dataset is Ready, a column it
    does not have is a 422 naming spec.criteria and the columns it has."""
    account, token = shim.new_account()
    setup_pair(shim, token)
    make_ready(shim, account, Model, "m", DIGITS)
    make_ready(shim, account, Dataset, "d", DIGITS)
    shim.records.mutate(
        Dataset, account, "d", lambda d: setattr(d.status, "attributes", ["width", "colour"])
    )
    with shim.client(token) as c:
        bad = order(criteria={"slices": [{"by": ["lighting"]}]})
        doc = assert_problem(c.post("/v1/evaluations", json=bad), 422, "spec.criteria")
        assert "lighting" in doc["detail"] and "colour" in doc["detail"]
        good = order(criteria={"slices": [{"by": ["colour"]}]})
        assert c.post("/v1/evaluations", json=good).status_code == 201


def test_the_clients_wait_sees_a_change_at_once(shim: Shim) -> None:
    """`dyff … --wait` follows a status by long polls: a change made half a second in is
    seen then, even though its pacing interval (for servers without long polls) is 5 s."""
    import threading
    import time

    from dyff.client import Client, ClientConfig

    account, token = shim.new_account()
    with shim.client(token) as c:
        assert c.post("/v1/models", json=model_body("m1")).status_code == 201

    def ready_later() -> None:
        time.sleep(0.5)
        make_ready(shim, account, Model, "m1", DIGITS)

    writer = threading.Thread(target=ready_later)
    writer.start()
    started = time.monotonic()
    with Client(ClientConfig(shim.url, token)) as client:
        entity = client.wait("models", "m1", interval=5.0, timeout=30)
    writer.join(10)
    assert entity["status"]["phase"] == "Ready"
    assert time.monotonic() - started < 3.0
