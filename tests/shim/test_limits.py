"""On a Complete evaluation: every prediction query parameter is bounded (422 naming it,
never a 5xx), and the HTML report carries its security headers."""

from __future__ import annotations

import pytest

from api_shim.edge import REPORT_CSP
from tests.shim.conftest import Shim
from tests.shim.test_api import assert_problem, complete_with_results, order, setup_pair

BAD = [
    ("offset", [("offset", str(2**63))]),
    ("offset", [("offset", str(10**30))]),
    ("offset", [("offset", "-1")]),
    ("limit", [("limit", str(2**64))]),
    ("limit", [("limit", "-7")]),
    ("columns", [("columns", "row_id"), ("columns", "row_id")]),
    ("label", [("label", "3"), ("label", "3")]),
    ("label", [("label", str(2**31))]),
    ("predicted", [("predicted", "-1")]),
]


@pytest.fixture
def complete(shim: Shim) -> tuple[str, str]:
    account, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        name = c.post("/v1/evaluations", json=order()).json()["metadata"]["name"]
    complete_with_results(shim, account, name)
    return token, name


def test_prediction_parameters_are_bounded_on_a_complete_evaluation(
    shim: Shim, complete: tuple[str, str]
) -> None:
    token, name = complete
    with shim.client(token) as c:
        for field, params in BAD:
            r = c.get(f"/v1/evaluations/{name}/predictions", params=params)
            doc = assert_problem(r, 422)
            assert doc["field"].split(".")[:2] == ["query", field], doc
        far = c.get(f"/v1/evaluations/{name}/predictions", params={"offset": 10**12})
        assert far.status_code == 200 and far.json()["rows"] == [] and far.json()["total"] == 50


def test_report_carries_security_headers(shim: Shim, complete: tuple[str, str]) -> None:
    token, name = complete
    with shim.client(token) as c:
        r = c.get(f"/v1/evaluations/{name}/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == REPORT_CSP
    assert "script-src" not in REPORT_CSP and "default-src 'none'" in REPORT_CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
