"""The HTTP edge, before any route: request body limits and security headers.

`BodyLimits` refuses a request body over `MAX_BODY_BYTES` with 413 (by its Content-Length,
or while it is read, so an unbounded body is never held in memory) and a JSON body nested
deeper than `MAX_JSON_DEPTH` with 422, both as problem+json naming the limit. The upload
route (`UPLOAD_PREFIX`) streams its own declared size and is left alone. It also refuses,
with 422, a `/v1/` path whose segments are not route words or entity names (`NAME_PATTERN`):
an escaped `/` (`..%2Fkeys`) or a dot segment (`%2E%2E`) never reaches a router, so no name
can be read as another route's path, whatever the client.

`SecurityHeaders` adds `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`
to every response, and to every HTML response without a policy of its own the
Content-Security-Policy of the report (`REPORT_CSP`: no script at all, inline styles and
`data:` images, which is everything the self-contained report uses). The `/docs` page sets
its own policy (`docs_csp`): its scripts and styles from the CDN FastAPI names, its one
inline script by hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dyff.schema import NAME_PATTERN, is_name

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
UPLOAD_PREFIX = "/v1/uploads/"
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
DOCS_CDN = "https://cdn.jsdelivr.net"
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def bad_path(scope: Scope) -> str | None:
    """Why a `/v1/` path is refused: a segment that is neither a route word nor a valid
    entity name (the routes' words are names too), or an escaped `/` in the raw path."""
    path: str = scope["path"]
    if not path.startswith("/v1/"):
        return None
    raw = scope.get("raw_path") or b""
    if b"%2f" in raw.lower() or b"%5c" in raw.lower():
        return "a name in the path contains '/' or '\\'"
    for segment in path[len("/v1/") :].split("/"):
        if segment and not is_name(segment):
            return f"{segment[:80]!r} is not a valid name ({NAME_PATTERN}, at most 63 chars)"
    return None


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether brackets outside strings nest deeper than `limit` (linear; no parsing)."""
    depth = 0
    for match in _TOKENS.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def docs_csp(html: str) -> str:
    """The policy of FastAPI's Swagger UI page: its CDN and its inline scripts by hash."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in _INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'none'; script-src {DOCS_CDN} {hashes}; style-src {DOCS_CDN}; "
        "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


async def _problem(
    scope: Scope, send: Send, status: int, title: str, detail: str, field: str = "body"
) -> None:
    doc: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    doc["detail"] = detail
    doc["field"] = field
    doc["errors"] = [{"field": field, "message": detail}]
    request_id = (scope.get("state") or {}).get("request_id")
    if request_id:
        doc["requestId"] = request_id
    body = json.dumps(doc).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimits:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        why = bad_path(scope)
        if why is not None:
            await _problem(scope, send, 422, "Invalid", f"path: {why}", field="path.name")
            return
        if scope["path"].startswith(UPLOAD_PREFIX):
            await self.app(scope, receive, send)
            return
        too_big = f"request body over {MAX_BODY_BYTES} bytes (the limit of JSON routes)"
        for name, value in scope.get("headers") or []:
            if name == b"content-length" and (
                not value.isdigit() or len(value) > 12 or int(value) > MAX_BODY_BYTES
            ):
                await _problem(scope, send, 413, "Request body too large", too_big)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _problem(scope, send, 413, "Request body too large", too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth_exceeds(body):
            detail = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
            await _problem(scope, send, 422, "Invalid", detail)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                names = {name.lower() for name, _ in headers}
                extra = [(n, v) for n, v in SECURITY_HEADERS if n not in names]
                html = any(
                    n.lower() == b"content-type" and v.lower().startswith(b"text/html")
                    for n, v in headers
                )
                if html and b"content-security-policy" not in names:
                    extra.append((b"content-security-policy", REPORT_CSP.encode()))
                message["headers"] = headers + extra
            await send(message)

        await self.app(scope, receive, send_with_headers)
