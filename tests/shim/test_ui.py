"""The web view at /ui over real stores: the login, CSRF and cookie rules over HTTP, the
pages scoped to the session's account, and the whole flow in headless Chromium driven over
its DevTools protocol (log in, lists, a report, a comparison, a leaderboard, delete with
confirmation), with screenshots under the test's temp folder."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api_shim.routes.ui import UI_CSP
from dyff import layout
from dyff.schema import Evaluation
from tests.shim.conftest import Shim
from tests.shim.evaluations_with_results import complete
from tests.shim.test_api import dataset_body, model_body, order

CHROMIUM = Path("/usr/bin/chromium")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def world(shim: Shim) -> tuple[str, str]:
    """An account with a model, a dataset, two complete evaluations and a pending one."""
    account, token = shim.new_account()
    with shim.client(token) as c:
        assert c.post("/v1/models", json=model_body("m")).status_code == 201
        assert c.post("/v1/datasets", json=dataset_body("d")).status_code == 201
        for name in ("ea", "eb", "waiting"):
            r = c.post("/v1/evaluations", json={"name": name, **order()})
            assert r.status_code == 201, r.text
    complete(shim, account, "ea", [i % 4 != 0 for i in range(200)])
    complete(shim, account, "eb", [i % 5 != 0 for i in range(200)])
    return account, token


def browser(shim: Shim) -> httpx.Client:
    return httpx.Client(base_url=shim.url, timeout=60, follow_redirects=False)


def csrf_of(page: httpx.Response) -> str:
    match = CSRF.search(page.text)
    assert match, page.text[:500]
    return match.group(1)


def log_in(c: httpx.Client, token: str) -> None:
    page = c.get("/ui/login")
    r = c.post("/ui/login", data={"key": token, "csrf": csrf_of(page)})
    assert r.status_code == 303 and r.headers["location"] == "/ui", r.text


def test_login_sets_a_strict_http_only_cookie_and_forms_need_the_csrf_token(shim: Shim) -> None:
    _, token = world(shim)
    with browser(shim) as c:
        r = c.get("/ui")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        page = c.get("/ui/login")
        assert page.status_code == 200 and page.headers["content-security-policy"] == UI_CSP
        assert "<script" not in page.text
        csrf_cookie = page.headers["set-cookie"]
        assert "dyff_csrf=" in csrf_cookie and "HttpOnly" in csrf_cookie
        assert "samesite=strict" in csrf_cookie.lower()
        token_field = csrf_of(page)
        # no token, a wrong one: refused, no session
        assert c.post("/ui/login", data={"key": token}).status_code == 422
        assert c.post("/ui/login", data={"key": token, "csrf": "x" * 43}).status_code == 422
        bad = c.post("/ui/login", data={"key": "dyff.nope.kdead.secret", "csrf": token_field})
        assert bad.status_code == 401 and 'id="login-error"' in bad.text
        assert "dyff_key" not in c.cookies
        r = c.post("/ui/login", data={"key": token, "csrf": token_field})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("dyff_key=") and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower() and "Path=/ui" in cookie
        assert "Secure" not in cookie  # plain http here
        home = c.get("/ui")
        assert home.status_code == 200 and 'id="models"' in home.text
        # logging out needs the token too
        assert c.post("/ui/logout", data={}).status_code == 422
        out = c.post("/ui/logout", data={"csrf": token_field})
        assert out.status_code == 303 and c.get("/ui").status_code == 303
    with browser(shim) as c:  # behind a TLS proxy the cookie is Secure
        page = c.get("/ui/login")
        r = c.post(
            "/ui/login",
            data={"key": token, "csrf": csrf_of(page)},
            headers={"X-Forwarded-Proto": "https"},
        )
        assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]


def test_the_pages_show_the_accounts_entities_results_and_comparisons(shim: Shim) -> None:
    account, token = world(shim)
    with browser(shim) as c:
        log_in(c, token)
        home = c.get("/ui")
        assert home.headers["content-security-policy"] == UI_CSP
        for name in ("ea", "eb", "waiting"):
            assert f'data-name="{name}"' in home.text
        assert 'http-equiv="refresh"' in home.text  # "waiting" is Pending
        assert f'<strong id="account">{account}</strong>' in home.text
        ev = c.get("/ui/evaluations/ea")
        assert ev.status_code == 200 and 'id="report-link"' in ev.text
        assert 'http-equiv="refresh"' not in ev.text
        report = c.get("/ui/evaluations/ea/report")
        assert report.status_code == 200 and 'id="metrics-table"' in report.text
        cmp = c.get("/ui/compare", params={"a": "ea", "b": "eb"})
        assert cmp.status_code == 200 and 'id="comparison-table"' in cmp.text
        assert 'data-metric="accuracy"' in cmp.text
        full = c.get("/ui/compare/report", params={"a": "ea", "b": "eb"})
        assert full.status_code == 200 and 'id="mcnemar"' in full.text
        assert "<script" not in full.text
        board = c.get("/ui/datasets/d/leaderboard")
        assert board.status_code == 200
        # eb is right on 160 rows, ea on 150
        assert board.text.index('data-name="eb"') < board.text.index('data-name="ea"')
        missing = c.get("/ui/evaluations/nope")
        assert missing.status_code == 404 and "<script" not in missing.text
        pending = c.get("/ui/evaluations/waiting/report")
        assert pending.status_code == 409


def test_delete_needs_confirmation_and_the_csrf_token(shim: Shim) -> None:
    account, token = world(shim)
    with browser(shim) as c:
        log_in(c, token)
        confirm = c.get("/ui/evaluations/eb/delete")
        assert confirm.status_code == 200 and 'id="confirm"' in confirm.text
        assert c.post("/ui/evaluations/eb/delete", data={}).status_code == 422
        assert c.post("/ui/evaluations/eb/delete", data={"csrf": "x" * 43}).status_code == 422
        entity = shim.records.get(Evaluation, account, "eb")
        assert entity.metadata.deletion_timestamp is None
        done = c.post("/ui/evaluations/eb/delete", data={"csrf": csrf_of(confirm)})
        assert done.status_code == 303 and done.headers["location"] == "/ui"
        assert shim.records.get(Evaluation, account, "eb").metadata.deletion_timestamp
        # a model in use: the page names its evaluations, and the form confirms them too
        page = c.get("/ui/models/m/delete")
        assert "ea" in page.text and 'name="cascade"' in page.text


def test_another_accounts_session_cannot_open_its_pages(shim: Shim) -> None:
    owner, _ = world(shim)
    _, other_token = shim.new_account()
    with browser(shim) as c:
        log_in(c, other_token)
        for path in (
            "/ui/evaluations/ea",
            "/ui/evaluations/ea/report",
            "/ui/evaluations/ea/delete",
            "/ui/models/m/delete",
            "/ui/datasets/d/leaderboard",
            "/ui/compare?a=ea&b=eb",
            "/ui/compare/report?a=ea&b=eb",
        ):
            r = c.get(path)
            assert r.status_code == 404, (path, r.status_code)
            assert "Traceback" not in r.text
        token_field = csrf_of(c.get("/ui"))
        r = c.post("/ui/evaluations/ea/delete", data={"csrf": token_field})
        assert r.status_code == 404
        assert shim.records.get(Evaluation, owner, "ea").metadata.deletion_timestamp is None
        home = c.get("/ui")
        assert 'data-name="ea"' not in home.text


def test_an_evaluations_page_shows_its_intervals_gates_and_flagged_slices(shim: Shim) -> None:
    """The criteria section of metrics.json (`dyff.criteria.compute` of synthetic
    predictions) on the evaluation's page, through the report's macros; evaluations
    without one, or whose metrics.json is gone, show the page as before."""
    from tests.report.test_criteria_report import HOSTILE, metrics_doc, rows_of

    account, token = world(shim)
    uid = shim.records.get(Evaluation, account, "ea").metadata.uid or ""
    key = layout.metrics_key(account, "ea", uid)
    section = metrics_doc()["criteria"]
    shim.blobs.put(
        key, json.dumps({**json.loads(shim.blobs.get(key)), "criteria": section}).encode()
    )
    with browser(shim) as c:
        log_in(c, token)
        page = c.get("/ui/evaluations/ea")
        assert page.status_code == 200 and page.headers["content-security-policy"] == UI_CSP
        text = page.text
        assert "<script" not in text.lower() and "&lt;script&gt;" in text
        # intervals beside the headline metrics, in their units
        acc = section["intervals"]["metrics"]["accuracy"]
        row = re.search(r'<tr data-metric="accuracy">.*?</tr>', text, re.S)
        assert row is not None and "95 % interval" in text
        assert f"[{acc['low'] * 100:.2f}%, {acc['high'] * 100:.2f}%]" in row.group(0)
        ece = section["intervals"]["metrics"]["ece"]
        assert f"[{ece['low']:.4f}, {ece['high']:.4f}]" in text
        # gates: each outcome
        gates = rows_of(text[text.index('<section id="gates">') :], "data-gate")
        results = section["gates"]["results"]
        assert list(gates) == [g["name"] for g in results]
        for g in results:
            assert ("PASS" if g["passed"] else "FAIL") in gates[g["name"]][1].split()
        # slices: the flagged ones first, marked, with their adjusted p-values
        slices = rows_of(text[text.index('<section id="slices">') :], "data-slice")
        flagged = section["slices"][0]["flagged"]
        assert list(slices)[:2] == ["lighting=night", "lighting=dusk"]
        for f in flagged:
            cls, row_text = slices[f"lighting={f['key']['lighting']}"]
            assert cls == "flagged" and f"q = {f['qValue']:.3g}" in row_text
        assert f"lighting={HOSTILE}" in slices and slices[f"lighting={HOSTILE}"][0] == ""
        # no criteria in metrics.json (an older evaluation), or none readable: as before
        plain = c.get("/ui/evaluations/eb")
        assert plain.status_code == 200 and 'data-metric="accuracy"' in plain.text
        for marker in ('id="gates"', 'id="slices"', "% interval"):
            assert marker not in plain.text
        uid_b = shim.records.get(Evaluation, account, "eb").metadata.uid or ""
        shim.blobs.delete(layout.metrics_key(account, "eb", uid_b))
        gone = c.get("/ui/evaluations/eb")
        assert gone.status_code == 200 and 'id="gates"' not in gone.text
        assert c.get("/ui/evaluations/waiting").status_code == 200


def test_an_evaluations_page_shows_its_robustness(shim: Shim) -> None:
    """The robustness section of metrics.json (`dyff.robustness.robustness_doc`) on the
    evaluation's page, through the report's macros: a row per kind and severity, each
    kind's mean and relative error, a chart per kind; none without the section."""
    from tests.report.test_robustness_report import robustness_section, table_rows

    account, token = world(shim)
    uid = shim.records.get(Evaluation, account, "ea").metadata.uid or ""
    key = layout.metrics_key(account, "ea", uid)
    robust = robustness_section()
    shim.blobs.put(
        key, json.dumps({**json.loads(shim.blobs.get(key)), "robustness": robust}).encode()
    )
    with browser(shim) as c:
        log_in(c, token)
        page = c.get("/ui/evaluations/ea")
        assert page.status_code == 200 and "<script" not in page.text.lower()
        text = page.text
        start = text.index('<section id="robustness">')
        rows = table_rows(text[start : text.index("</section>", start)])
        noise = robust["perturbations"][0]
        shown = [r for r in rows if r[1] == "gaussian_noise"]
        assert [r[2] for r in shown] == ["1", "2", "3", "4", "5", "mean"]
        for (_, _, severity, row_text), r in zip(shown, noise["bySeverity"], strict=False):
            delta = noise["degradation"][severity]
            assert row_text == (
                f"gaussian_noise {severity} {r['parameter']:g} {r['accuracy']:.4f} "
                f"{r['error']:.4f} {delta:+.4f}"
            )
        assert shown[-1][3].endswith(f"{noise['meanError']:.4f} {noise['relativeError']:+.4f}")
        assert rows[-1][0] == "all-kinds" and f"{robust['meanError']:.4f}" in rows[-1][3]
        assert text.count('class="severity-point"') == sum(
            len(e["severities"]) for e in robust["perturbations"]
        )
        assert 'id="robustness-2"' in text and "clean 0.900" in text
        # an evaluation without the section: no Robustness at all
        plain = c.get("/ui/evaluations/eb")
        assert plain.status_code == 200 and 'id="robustness"' not in plain.text


# ------------------------------------------------------------- in a browser


class DevTools:
    """A headless Chromium driven over its DevTools protocol (one page)."""

    def __init__(self, profile: Path) -> None:
        import websocket

        self.proc = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--hide-scrollbars", "--remote-debugging-port=0",
             "--remote-allow-origins=*", "--window-size=1280,900",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json()
                 if t["type"] == "page"]  # fmt: skip
        self.ws = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
        )
        self.next_id = 0
        self.call("Page.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                result: dict[str, Any] = message.get("result", {})
                return result

    def wait_load(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("method") == "Page.loadEventFired":
                return
        raise AssertionError("page did not load")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_load()

    def js(self, expression: str) -> Any:
        out = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return out.get("result", {}).get("value")

    def act(self, expression: str) -> None:
        """Run an action that navigates (submit, click), and wait for the next page."""
        self.js(expression)
        self.wait_load()

    def shot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        assert path.stat().st_size > 1000

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[DevTools]:
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed: apt-get install -y chromium")
    pytest.importorskip("websocket")
    tools = DevTools(tmp_path / "profile")
    try:
        yield tools
    finally:
        tools.close()


@pytest.mark.slow
def test_the_web_view_in_headless_chromium(shim: Shim, chrome: DevTools, tmp_path: Path) -> None:
    account, token = world(shim)
    _, other_token = shim.new_account()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    chrome.goto(f"{shim.url}/ui")
    assert chrome.js("location.pathname") == "/ui/login"
    chrome.act(
        f"document.querySelector('#key').value = {json.dumps(token)};"
        "document.querySelector('#login-button').click()"
    )
    assert chrome.js("location.pathname") == "/ui"
    assert chrome.js("document.querySelector('#account').textContent") == account
    assert chrome.js("document.cookie") == ""  # HttpOnly: no script reads the key
    names = chrome.js("[...document.querySelectorAll('#evaluations tr[data-name]')]"
                      ".map(r => r.dataset.name)")  # fmt: skip
    assert sorted(names) == ["ea", "eb", "waiting"]
    chrome.shot(shots / "home.png")
    chrome.act("document.querySelector('a[href=\"/ui/evaluations/ea\"]').click()")
    chrome.act("document.querySelector('#report-link').click()")
    assert chrome.js("!!document.querySelector('#metrics-table')")
    chrome.shot(shots / "report.png")
    chrome.goto(f"{shim.url}/ui/compare?a=ea&b=eb")
    rows = chrome.js("document.querySelectorAll('#comparison-table tbody tr').length")
    assert rows >= 5
    chrome.act("document.querySelector('#comparison-report').click()")
    assert chrome.js("document.querySelector('#mcnemar').textContent").count("fixed") >= 1
    width = chrome.js("document.querySelector('#differences svg').getBoundingClientRect().width")
    assert width > 300
    chrome.shot(shots / "comparison.png")
    chrome.goto(f"{shim.url}/ui/datasets/d/leaderboard")
    assert chrome.js("document.querySelectorAll('#leaderboard tr[data-name]').length") == 2
    chrome.shot(shots / "leaderboard.png")
    # delete with confirmation
    chrome.goto(f"{shim.url}/ui/evaluations/eb/delete")
    chrome.shot(shots / "confirm-delete.png")
    chrome.act("document.querySelector('#confirm').click()")
    assert chrome.js("location.pathname") == "/ui"
    assert shim.records.get(Evaluation, account, "eb").metadata.deletion_timestamp is not None
    chrome.shot(shots / "after-delete.png")
    # another account's session: the same pages are 404
    chrome.act("document.querySelector('#logout').click()")
    assert chrome.js("location.pathname") == "/ui/login"
    chrome.act(
        f"document.querySelector('#key').value = {json.dumps(other_token)};"
        "document.querySelector('#login-button').click()"
    )
    chrome.goto(f"{shim.url}/ui/evaluations/ea")
    assert chrome.js("!!document.querySelector('#error')")
    assert "not found" in chrome.js("document.body.innerText")
    chrome.shot(shots / "other-account.png")
    assert len(list(shots.glob("*.png"))) == 7
