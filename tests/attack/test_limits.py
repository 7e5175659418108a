"""Limits at the edge of a real `dyff up`: query parameters, request sizes, headers and
names in paths. Every answer to a hostile request is a 4xx problem document, never a 5xx."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.attack.conftest import Account, Up

PROBLEM = "application/problem+json"


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    doc: dict[str, Any] = r.json()
    if field is not None:
        assert field in (doc.get("field") or "") + doc.get("detail", ""), doc
    return doc


# ------------------------------------------------------- 1. query parameters

HUGE = [str(2**63), str(2**64), str(10**30), "-1", "-9223372036854775809", "1e400", "nan"]
BAD_QUERIES: list[tuple[str, list[tuple[str, str]]]] = [
    *[("offset", [("offset", v)]) for v in HUGE],
    *[("limit", [("limit", v)]) for v in [*HUGE, "0", "10001"]],
    ("columns", [("columns", "row_id"), ("columns", "row_id")]),
    ("columns", [("columns", "score"), ("columns", "label"), ("columns", "score")]),
    ("columns", [("columns", "no_such_column")]),
    ("label", [("label", "1"), ("label", "1")]),
    ("label", [("label", str(2**31))]),
    ("label", [("label", "-3")]),
    ("label", [("label", str(i)) for i in range(1001)]),
    ("predicted", [("predicted", str(10**30))]),
    ("predicted", [("predicted", "2"), ("predicted", "2")]),
    ("minScore", [("minScore", "-1")]),
    ("maxScore", [("maxScore", "inf")]),
]


@pytest.fixture(scope="module")
def ordered(up: Up) -> tuple[Account, str]:
    """An account with an evaluation that is not Complete (its model is an image nobody
    can pull, its dataset a blob that is not there)."""
    from tests.attack.conftest import new_account

    owner = new_account(up)
    digest = "a" * 64
    with up.client(owner.key) as c:
        image = {"reference": f"registry.invalid/m@sha256:{digest}"}
        model = {"name": "m", "spec": {"source": {"form": "image", "image": image}}}
        assert c.post("/v1/models", json=model).status_code == 201
        uri = {"uri": "file:///nowhere/d.parquet", "sha256": digest}
        dataset = {"name": "d", "spec": {"source": {"form": "parquet", "uri": uri}}}
        assert c.post("/v1/datasets", json=dataset).status_code == 201
        order = {"name": "pending", "spec": {"model": {"name": "m"}, "dataset": {"name": "d"}}}
        r = c.post("/v1/evaluations", json=order)
        assert r.status_code == 201, r.text
    return owner, "pending"


@pytest.mark.parametrize(
    ("field", "params"), BAD_QUERIES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_QUERIES)]
)
@pytest.mark.parametrize("exists", [False, True])
def test_prediction_query_out_of_range_is_422_naming_it(
    up: Up, ordered: tuple[Account, str], field: str, params: list[tuple[str, str]], exists: bool
) -> None:
    owner, evaluation = ordered
    with up.client(owner.key) as c:
        name = evaluation if exists else "no-such-evaluation"
        r = c.get(f"/v1/evaluations/{name}/predictions", params=params)
    assert_problem(r, 422, field)


def test_prediction_query_in_range_reaches_the_evaluation(
    up: Up, ordered: tuple[Account, str]
) -> None:
    owner, evaluation = ordered
    params = [("offset", "1000000000000"), ("limit", "10000"), ("columns", "row_id")]
    with up.client(owner.key) as c:
        assert_problem(c.get("/v1/evaluations/nothing-here/predictions", params=params), 404)
        assert_problem(c.get(f"/v1/evaluations/{evaluation}/predictions", params=params), 409)


LIST_BAD: list[tuple[str, list[tuple[str, str]]]] = [
    ("limit", [("limit", str(2**64))]),
    ("limit", [("limit", "-1")]),
    ("limit", [("limit", "501")]),
    ("pageToken", [("pageToken", "x" * 201)]),
    ("pageToken", [("pageToken", "!!notbase64")]),
    ("pageToken", [("pageToken", "Li4va2V5cw")]),  # base64 of ../keys
    ("name", [("name", "n" * 64)]),
    ("phase", [("phase", "P" * 41)]),
    ("phase", [("phase", "Ready' OR 1=1")]),
    ("label", [("label", "a=1"), ("label", "a=2")]),
    ("label", [("label", f"k{i}=v") for i in range(17)]),
    ("label", [("label", "k=" + "v" * 400)]),
    ("label", [("label", "novalue")]),
    ("account", [("account", "../root")]),
]


@pytest.mark.parametrize("plural", ["models", "datasets", "evaluations"])
@pytest.mark.parametrize(
    ("field", "params"), LIST_BAD, ids=[f"{f}-{i}" for i, (f, _) in enumerate(LIST_BAD)]
)
def test_list_and_get_parameters_are_bounded(
    up: Up, account: Account, plural: str, field: str, params: list[tuple[str, str]]
) -> None:
    with up.client(account.key) as c:
        path = f"/v1/{plural}/x" if field == "account" else f"/v1/{plural}"
        r = c.get(path, params=params)
    assert_problem(r, 422, field)


def test_no_query_parameter_of_any_route_answers_5xx(up: Up, account: Account) -> None:
    """Every query parameter the OpenAPI document declares, given hostile values."""
    with up.client(account.key) as c:
        spec = c.get("/openapi.json").json()
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                url = path.replace("{name}", "x").replace("{key_id}", "x")
                url = url.replace("{account}", "x").replace("{ticket}", "x")
                for p in op.get("parameters", []):
                    if p["in"] != "query":
                        continue
                    for v in [*HUGE, "", "x" * 5000, "\x00", "%00"]:
                        r = c.request(method, url, params=[(p["name"], v), (p["name"], v)])
                        assert r.status_code < 500, (method, url, p["name"], v, r.text[:300])


# ------------------------------------------------ 2. sizes of bodies and fields

DIGEST = "b" * 64


def _dataset(name: str, **upload: Any) -> dict[str, Any]:
    source = {"form": "parquet", "upload": {"sha256": DIGEST, "sizeBytes": 10, **upload}}
    return {"name": name, "spec": {"source": source}}


@pytest.mark.parametrize("size", [2**40 + 1, 2**63, 2**64, int("9" * 401), 0, -1])
def test_upload_size_bytes_is_bounded(up: Up, account: Account, size: int) -> None:
    with up.client(account.key) as c:
        r = c.post("/v1/datasets", json=_dataset("big", sizeBytes=size))
        assert_problem(r, 422, "sizeBytes")
        assert c.get("/v1/datasets/big").status_code == 404


def test_a_body_over_the_limit_is_413_before_it_is_read(up: Up, account: Account) -> None:
    with up.client(account.key) as c:
        labels = {f"k{i}": "v" * 60 for i in range(40_000)}  # about 3 MB
        body = {**_dataset("huge-labels"), "labels": labels}
        assert_problem(c.post("/v1/datasets", json=body), 413, "body")

        def chunks() -> Any:  # no Content-Length: counted while read
            yield b'{"name": "chunked", "labels": {'
            for i in range(300):
                yield b'"k%d": "%s",' % (i, b"v" * 8000)
            yield b'"x": "y"}}'

        r = c.post("/v1/datasets", content=chunks(), headers={"content-type": "application/json"})
        assert_problem(r, 413, "body")
        for plural in ("datasets", "models"):
            assert c.get(f"/v1/{plural}").json()["items"] == []
    assert "Traceback" not in up.log_text()


@pytest.mark.parametrize("depth", [33, 1000, 200_000])
def test_deep_json_is_422_naming_the_limit(up: Up, account: Account, depth: int) -> None:
    with up.client(account.key) as c:
        for opener, closer in (("[", "]"), ('{"a":', "}")):
            body = '{"name": "deep", "labels": ' + opener * depth + "1" + closer * depth + "}"
            r = c.post(
                "/v1/evaluations", content=body, headers={"content-type": "application/json"}
            )
            doc = assert_problem(r, 413 if len(body) > 1024 * 1024 else 422)
            assert "32" in doc["detail"] or "1048576" in doc["detail"], doc


def test_brackets_inside_strings_do_not_count_as_depth(up: Up, account: Account) -> None:
    with up.client(account.key) as c:
        body = _dataset("fine", filename="[" * 250 + "{" * 50)
        assert_problem(c.post("/v1/datasets", json=body), 422, "filename")  # too long, not deep
        body = _dataset("fine", filename="[[{{" * 10)
        assert c.post("/v1/datasets", json=body).status_code == 201


OVERSIZED_BODIES: list[tuple[str, str, dict[str, Any]]] = [
    ("datasets", "labels", {**_dataset("l1"), "labels": {f"k{i}": "v" for i in range(65)}}),
    ("datasets", "labels", {**_dataset("l2"), "labels": {"k": "v" * 64}}),
    ("datasets", "labels", {**_dataset("l3"), "labels": {"k" * 318: "v"}}),
    ("datasets", "labels", {**_dataset("l4"), "labels": {"bad key": "v"}}),
    ("datasets", "filename", _dataset("f1", filename="f" * 256)),
    (
        "datasets",
        "split",
        {**_dataset("s1"), "spec": {**_dataset("s1")["spec"], "split": "s" * 201}},
    ),
    (
        "datasets",
        "shardRows",
        {**_dataset("s2"), "spec": {**_dataset("s2")["spec"], "shardRows": 2**64}},
    ),
    (
        "datasets",
        "uri",
        {
            "name": "u1",
            "spec": {
                "source": {
                    "form": "parquet",
                    "uri": {"uri": "gs://b/" + "x" * 2100, "sha256": DIGEST},
                }
            },
        },
    ),
    ("datasets", "name", _dataset("n" * 64)),
    (
        "models",
        "reference",
        {
            "name": "i1",
            "spec": {
                "source": {
                    "form": "image",
                    "image": {"reference": "r/" + "x" * 600 + "@sha256:" + DIGEST},
                }
            },
        },
    ),
    (
        "models",
        "port",
        {
            "name": "i2",
            "spec": {
                "source": {
                    "form": "image",
                    "image": {"reference": "r@sha256:" + DIGEST, "port": 2**70},
                }
            },
        },
    ),
    (
        "models",
        "memory",
        {
            "name": "r1",
            "spec": {
                "source": {"form": "bento", "upload": {"sha256": DIGEST, "sizeBytes": 1}},
                "resources": {"memory": "9" * 33},
            },
        },
    ),
    (
        "models",
        "gpu",
        {
            "name": "r2",
            "spec": {
                "source": {"form": "bento", "upload": {"sha256": DIGEST, "sizeBytes": 1}},
                "resources": {"gpu": 2**63},
            },
        },
    ),
    (
        "evaluations",
        "labels",
        {
            "labels": {f"k{i}": "v" for i in range(400)},
            "spec": {"model": {"name": "m"}, "dataset": {"name": "d"}},
        },
    ),
    (
        "evaluations",
        "metrics",
        {"spec": {"model": {"name": "m"}, "dataset": {"name": "d"}, "metrics": ["accuracy"] * 8}},
    ),
    ("evaluations", "name", {"spec": {"model": {"name": "m" * 64}, "dataset": {"name": "d"}}}),
    (
        "evaluations",
        "account",
        {"spec": {"model": {"name": "m", "account": "a" * 64}, "dataset": {"name": "d"}}},
    ),
    (
        "evaluations",
        "labelMapping",
        {
            "spec": {
                "model": {"name": "m"},
                "dataset": {"name": "d"},
                "labelMapping": {"map": {"k" * 257: "v"}},
            }
        },
    ),
    (
        "evaluations",
        "topK",
        {"spec": {"model": {"name": "m"}, "dataset": {"name": "d"}, "inference": {"topK": 2**64}}},
    ),
]


@pytest.mark.parametrize(
    ("plural", "field", "body"),
    OVERSIZED_BODIES,
    ids=[f"{p}-{f}-{i}" for i, (p, f, _) in enumerate(OVERSIZED_BODIES)],
)
def test_every_field_is_bounded_at_the_edge(
    up: Up, account: Account, plural: str, field: str, body: dict[str, Any]
) -> None:
    with up.client(account.key) as c:
        assert_problem(c.post(f"/v1/{plural}", json=body), 422, field)
        assert c.get(f"/v1/{plural}").json()["items"] == []


def test_admin_display_name_is_bounded(up: Up) -> None:
    with up.client(up.admin_key) as c:
        r = c.post("/v1/accounts", json={"name": "longname", "displayName": "d" * 257})
        assert_problem(r, 422, "displayName")


def test_uploads_keep_their_own_size_check(up: Up, account: Account) -> None:
    """An upload over the JSON limit still goes through its own route."""
    import hashlib

    data = bytes(range(256)) * (3 * 4096)  # 3 MiB
    digest = hashlib.sha256(data).hexdigest()
    source = {"form": "bento", "upload": {"sha256": digest, "sizeBytes": len(data)}}
    with up.client(account.key) as c:
        r = c.post("/v1/models", json={"name": "up3", "spec": {"source": source}})
        assert r.status_code == 201, r.text
        info = r.json()["upload"]
    headers = {"X-Dyff-Upload-Token": info["token"], **info.get("headers", {})}
    with httpx.Client(timeout=60) as plain:
        assert plain.put(info["url"], content=data + b"x", headers=headers).status_code == 413
        assert plain.put(info["url"], content=data, headers=headers).status_code == 204


# -------------------------------------------------------- 3. security headers


def _assert_security_headers(r: httpx.Response) -> None:
    assert r.headers.get("x-content-type-options") == "nosniff", (r.url, r.headers)
    assert r.headers.get("referrer-policy") == "no-referrer", (r.url, r.headers)


def test_every_response_carries_security_headers(up: Up, account: Account) -> None:
    with up.client(account.key) as c:
        answers = [
            c.get("/healthz"),
            c.get("/metrics"),
            c.get("/openapi.json"),
            c.get("/v1/models"),
            c.get("/v1/models/nope"),
            c.get("/v1/evaluations/nope/report"),
            c.get("/v1/evaluations/nope/predictions", params={"offset": "-1"}),
            c.get("/no/such/route"),
            c.post("/v1/models", content=b"{", headers={"content-type": "application/json"}),
            c.post("/v1/datasets", content=b"x" * (1024 * 1024 + 1)),
            c.get("/v1/models/..%2Fkeys"),
        ]
    with up.client("not-a-key") as c:
        answers.append(c.get("/v1/models"))
    for r in answers:
        _assert_security_headers(r)
        if r.headers.get("content-type", "").startswith("text/html"):
            assert "content-security-policy" in r.headers


def test_docs_page_has_a_policy_that_allows_only_its_own_script(up: Up) -> None:
    import base64
    import hashlib
    import re

    with httpx.Client(base_url=up.url) as c:
        r = c.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    _assert_security_headers(r)
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    assert inline
    for script in inline:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    with httpx.Client(base_url=up.url) as c:
        assert c.get("/redoc").status_code == 404


# --------------------------------------------------------- 4. names in paths

ESCAPES = ["..%2Fkeys", "..%2fkeys", "%2E%2E", "%2e", "..%5Ckeys", "UPPER", "a_b", "x" * 64]


@pytest.mark.parametrize("segment", ESCAPES)
def test_raw_paths_cannot_name_another_route(up: Up, account: Account, segment: str) -> None:
    with up.client(account.key) as c:
        key_id = c.get("/v1/keys").json()[0]["id"]
        for method, path in [
            ("GET", f"/v1/models/{segment}"),
            ("DELETE", f"/v1/models/{segment}"),
            ("DELETE", f"/v1/datasets/{segment}%2F{key_id}"),
            ("GET", f"/v1/evaluations/{segment}/report"),
            ("GET", f"/v1/evaluations/{segment}/predictions"),
            ("DELETE", f"/v1/keys/{segment}"),
            ("PUT", f"/v1/uploads/{segment}/t"),
        ]:
            r = c.request(method, path)
            assert_problem(r, 422)
        assert c.get("/v1/keys").status_code == 200  # the key still works


@pytest.mark.parametrize("name", ["../keys", "..", ".", "../../v1/keys", "a/../../keys", "?x"])
def test_the_client_escapes_names(up: Up, account: Account, name: str) -> None:
    from dyff.client import ApiError, Client, ClientConfig

    with up.client(account.key) as c:
        key_id = c.get("/v1/keys").json()[0]["id"]
    with Client(ClientConfig(up.url, account.key)) as client:
        for call in (
            lambda: client.get("models", name),
            lambda: client.delete("models", f"{name}/{key_id}"),
            lambda: client.delete("evaluations", name),
            lambda: client.metrics(name),
            lambda: client.predictions(name),
            lambda: client.report(name),
        ):
            with pytest.raises(ApiError) as err:
                call()
            assert err.value.status == 422, err.value.problem
        assert client.list_all("models") is not None
    with up.client(account.key) as c:
        keys = c.get("/v1/keys").json()
        assert [k["revoked"] for k in keys if k["id"] == key_id] == [False]
