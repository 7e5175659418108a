"""The web view at `/ui`: server-rendered HTML (Jinja2), no script at all.

- **Login** with an API key: `POST /ui/login` checks the key like the API does and keeps it
  in the cookie `dyff_key` (`HttpOnly`, `SameSite=Strict`, `Secure` when the request came
  over TLS, directly or through a proxy's `X-Forwarded-Proto`), path `/ui`. Every page reads
  the caller from that cookie and is scoped to the caller's account exactly as the API is:
  another account's entity answers 404.
- **CSRF.** Every form that changes state (login, logout, delete) carries a token that must
  equal the `dyff_csrf` cookie (double submit; compared in constant time). The cookie is set
  by the pages that show forms; a cross-site page can neither read it nor (SameSite=Strict)
  make the browser send it.
- **Pages**: models, datasets and evaluations with phase and progress (the page refreshes
  itself with `<meta http-equiv="refresh">` while something is pending or running), an
  evaluation's page (headline metrics with their intervals, gates, slices and robustness,
  from its metrics.json) and its report, the comparison of any two complete evaluations
  (and its full report), each dataset's leaderboard, and delete with a confirmation page.
- **Policy**: `UI_CSP` allows no script, inline styles, `data:` images, forms posting to the
  shim itself only, and no framing.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api_shim.auth import AccountScope
from api_shim.params import NameStr
from api_shim.routes import comparisons
from api_shim.routes.entities import _dependents
from api_shim.routes.results import complete_evaluation, results_gone_is_conflict
from api_shim.state import AppState, StateDep
from dyff import compare, layout
from dyff.access import check_api_may_change
from dyff.accounts import Unauthorized
from dyff.errors import Conflict, DyffError, Invalid, NotFound
from dyff.lifecycle import EvaluationPhase
from dyff.report.criteria_view import CriteriaView, criteria_view
from dyff.report.page import _env
from dyff.report.robustness_view import RobustnessView, robustness_view
from dyff.schema import Dataset, Entity, Evaluation, Model

router = APIRouter(include_in_schema=False)
log = logging.getLogger("dyff.ui")

KEY_COOKIE = "dyff_key"
CSRF_COOKIE = "dyff_csrf"
COOKIE_PATH = "/ui"
MAX_FORM_BYTES = 16 * 1024
MAX_KEY_CHARS = 512
LISTED = 200  # entities of each kind listed on the home page
REFRESH_SECONDS = 5
UI_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
KINDS: dict[str, type[Entity]] = {"models": Model, "datasets": Dataset, "evaluations": Evaluation}
ACTIVE_PHASES = {"Pending", "Ingesting", "Packaging", "Running", "Deleting"}
EvalQuery = Annotated[str | None, Query(max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


# ----------------------------------------------------------------- plumbing


class _Redirect(Exception):
    def __init__(self, to: str) -> None:
        self.to = to


def _secure(request: Request) -> bool:
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or proto == "https"


def _csrf_token(request: Request) -> tuple[str, bool]:
    """The session's CSRF token and whether it is new (then the response sets it)."""
    token = request.cookies.get(CSRF_COOKIE) or ""
    if 20 <= len(token) <= 100 and token.isascii():
        return token, False
    return secrets.token_urlsafe(32), True


def _set_cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path=COOKIE_PATH,
        httponly=True,
        secure=_secure(request),
        samesite="strict",
    )


def _page(
    request: Request, template: str, status: int = 200, refresh: bool = False, **context: Any
) -> HTMLResponse:
    token, new = _csrf_token(request)
    html = (
        _env()
        .get_template(template)
        .render(csrf=token, refresh=REFRESH_SECONDS if refresh else None, **context)
    )
    response = HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": UI_CSP})
    response.headers["Cache-Control"] = "no-store"
    if new:
        _set_cookie(response, request, CSRF_COOKIE, token)
    return response


def _error(request: Request, exc: DyffError) -> HTMLResponse:
    status = exc.status if 400 <= exc.status < 600 else 500
    return _page(request, "ui_error.html.j2", status=status, title=exc.title, detail=exc.message,
                 account=None)  # fmt: skip


async def _scope(request: Request, state: AppState) -> AccountScope:
    """The caller of the session cookie; no or a bad cookie sends the browser to log in."""
    key = request.cookies.get(KEY_COOKIE)
    if not key or len(key) > MAX_KEY_CHARS:
        raise _Redirect("/ui/login")
    caller = state.authenticator.cached(key)
    if caller is None:
        try:
            caller = await run_in_threadpool(state.authenticator, key)
        except Unauthorized:
            raise _Redirect("/ui/login") from None
    return AccountScope(caller, state.records)


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form (each field once), refused when larger than MAX_FORM_BYTES."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Invalid("form too large", field="body")
    fields: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(body.decode("utf-8", "replace")):
        if name in fields:
            raise Invalid(f"form field {name!r} given twice", field=name)
        fields[name] = value
    return fields


def _check_csrf(request: Request, form: dict[str, str]) -> None:
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    sent = form.get("csrf") or ""
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise Invalid("the form's CSRF token is missing or stale: reload the page", field="csrf")


async def _run(request: Request, state: AppState, render: Any) -> Response:
    """Run a page's `render(scope)` in the thread pool, mapping a login redirect and dyff's
    errors to pages."""
    try:
        scope = await _scope(request, state)
        result: Response = await run_in_threadpool(render, scope)
        return result
    except _Redirect as redirect:
        return RedirectResponse(redirect.to, status_code=303)
    except DyffError as exc:
        return _error(request, exc)


# ------------------------------------------------------------------- login


@router.get("/ui/login")
async def login_page(request: Request) -> Response:
    return _page(request, "ui_login.html.j2", account=None, message=None)


@router.post("/ui/login")
async def login(request: Request, state: StateDep) -> Response:
    try:
        form = await _form(request)
        _check_csrf(request, form)
    except DyffError as exc:
        return _error(request, exc)
    key = form.get("key", "").strip()
    try:
        if not key or len(key) > MAX_KEY_CHARS:
            raise Unauthorized("no key")
        await run_in_threadpool(state.authenticator, key)
    except Unauthorized:
        return _page(request, "ui_login.html.j2", status=401, account=None,
                     message="That key is not valid (wrong, revoked or expired).")  # fmt: skip
    response = RedirectResponse("/ui", status_code=303)
    _set_cookie(response, request, KEY_COOKIE, key)
    return response


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    try:
        _check_csrf(request, await _form(request))
    except DyffError as exc:
        return _error(request, exc)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(KEY_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict",
                           secure=_secure(request))  # fmt: skip
    return response


# ------------------------------------------------------------------- pages


def _progress(e: Evaluation) -> str:
    p = e.status.progress
    if p is None or not p.shards_total:
        return ""
    return f"{p.shards_done}/{p.shards_total} shards"


@router.get("/ui")
async def home(request: Request, state: StateDep) -> Response:
    def render(scope: AccountScope) -> Response:
        lists: dict[str, list[Any]] = {}
        for plural, kind in KINDS.items():
            lists[plural] = scope.records.list(kind, scope.account, limit=LISTED).items
        active = any(
            (e.phase or "Pending") in ACTIVE_PHASES for items in lists.values() for e in items
        )
        return _page(request, "ui_home.html.j2", refresh=active, account=scope.account,
                     lists=lists, progress=_progress)  # fmt: skip

    return await _run(request, state, render)


def _results(
    state: AppState, evaluation: Evaluation
) -> tuple[CriteriaView | None, RobustnessView | None]:
    """The criteria (intervals, slices, gates) and robustness results of a complete
    evaluation from its metrics.json; None for what it lacks, both None when its results
    cannot be read now (the page shows the rest)."""
    if evaluation.status.phase != EvaluationPhase.COMPLETE:
        return None, None
    key = layout.metrics_key(evaluation.account, evaluation.name, evaluation.metadata.uid or "")
    try:
        doc = json.loads(state.blobs.get(key))
    except (FileNotFoundError, NotFound, ValueError) as exc:
        log.warning("metrics of evaluation %s unreadable: %s", evaluation.name, exc)
        return None, None
    if not isinstance(doc, dict):
        return None, None
    return criteria_view(doc), robustness_view(doc)


@router.get("/ui/evaluations/{name}")
async def evaluation_page(name: NameStr, request: Request, state: StateDep) -> Response:
    def render(scope: AccountScope) -> Response:
        evaluation = scope.readable(Evaluation, name)
        others = [
            e.name
            for e in scope.records.list(Evaluation, scope.account, limit=LISTED).items
            if e.status.phase == EvaluationPhase.COMPLETE and e.name != name
        ]
        active = (evaluation.phase or "Pending") in ACTIVE_PHASES
        criteria, robustness = _results(state, evaluation)
        return _page(request, "ui_evaluation.html.j2", refresh=active, account=scope.account,
                     e=evaluation, progress=_progress(evaluation), others=others,
                     criteria=criteria, robustness=robustness)  # fmt: skip

    return await _run(request, state, render)


@router.get("/ui/evaluations/{name}/report")
async def evaluation_report(name: NameStr, request: Request, state: StateDep) -> Response:
    def render(scope: AccountScope) -> Response:
        from dyff.report import build_report

        complete_evaluation(scope, name)
        with results_gone_is_conflict(name):
            html = build_report(state.records, state.blobs, scope.account, name, state.cache_dir)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    return await _run(request, state, render)


@router.get("/ui/compare")
async def compare_page(
    request: Request, state: StateDep, a: EvalQuery = None, b: EvalQuery = None
) -> Response:
    def render(scope: AccountScope) -> Response:
        complete = [
            e.name
            for e in scope.records.list(Evaluation, scope.account, limit=LISTED).items
            if e.status.phase == EvaluationPhase.COMPLETE
        ]
        doc = None
        if a and b:
            doc = comparisons.comparison(state, scope, a, b, compare.stats.DEFAULT_RESAMPLES, 0).doc
        return _page(request, "ui_compare.html.j2", account=scope.account, complete=complete,
                     a=a, b=b, doc=doc)  # fmt: skip

    return await _run(request, state, render)


@router.get("/ui/compare/report")
async def compare_report(request: Request, state: StateDep, a: EvalQuery, b: EvalQuery) -> Response:
    def render(scope: AccountScope) -> Response:
        if not a or not b:
            raise Invalid("name two evaluations, a and b", field="a")
        html = comparisons.report_html(state, scope, a, b, compare.stats.DEFAULT_RESAMPLES, 0)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    return await _run(request, state, render)


@router.get("/ui/datasets/{name}/leaderboard")
async def leaderboard_page(
    name: NameStr,
    request: Request,
    state: StateDep,
    metric: Annotated[str, Query(pattern=r"^(accuracy|top5_accuracy|macro_f1|ece)$")] = "accuracy",
) -> Response:
    def render(scope: AccountScope) -> Response:
        board = comparisons.get_leaderboard(
            name, scope, state, metric=metric, account=None, limit=compare.MAX_LEADERBOARD,  # type: ignore[arg-type]
            resamples=compare.stats.DEFAULT_RESAMPLES, seed=0,
        )  # fmt: skip
        return _page(request, "ui_leaderboard.html.j2", account=scope.account, board=board,
                     name=name, metric=metric, metrics=compare.LEADERBOARD_METRICS)  # fmt: skip

    return await _run(request, state, render)


# ------------------------------------------------------------------ delete


def _own(scope: AccountScope, plural: str, name: str) -> Entity:
    kind = KINDS.get(plural)
    if kind is None:
        raise NotFound("no such page")
    entity = scope.records.find(kind, scope.account, name)  # the caller's own only
    if entity is None:
        raise NotFound(f"{kind.kind_name} {name!r} not found")
    return entity


@router.get("/ui/{plural}/{name}/delete")
async def delete_page(plural: str, name: NameStr, request: Request, state: StateDep) -> Response:
    def render(scope: AccountScope) -> Response:
        entity = _own(scope, plural, name)
        dependents = [] if isinstance(entity, Evaluation) else _dependents(scope.records, entity)
        return _page(request, "ui_delete.html.j2", account=scope.account, plural=plural,
                     entity=entity, dependents=[d.name for d in dependents])  # fmt: skip

    return await _run(request, state, render)


@router.post("/ui/{plural}/{name}/delete")
async def delete(plural: str, name: NameStr, request: Request, state: StateDep) -> Response:
    try:
        form = await _form(request)
        _check_csrf(request, form)
    except DyffError as exc:
        return _error(request, exc)

    def render(scope: AccountScope) -> Response:
        entity = _own(scope, plural, name)
        check_api_may_change(entity)
        kind = type(entity)
        dependents = [] if isinstance(entity, Evaluation) else _dependents(scope.records, entity)
        if dependents and form.get("cascade") != "yes":
            raise Conflict(
                f"{kind.kind_name} {name!r} is used by evaluations "
                f"{', '.join(e.name for e in dependents[:10])}; confirm deleting them too",
                field="cascade",
            )
        for dependent in dependents:
            scope.records.mark_deleting(Evaluation, scope.account, dependent.name)
        scope.records.mark_deleting(kind, scope.account, name)
        return RedirectResponse("/ui", status_code=303)

    return await _run(request, state, render)
