"""PUT /v1/uploads/{account}/{ticket}: the shim's own upload endpoint (file backend,
emulator). In production an upload URL is a GCS signed URL and bytes never come here."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool

from api_shim.params import NameStr
from api_shim.problems import responses
from api_shim.state import StateDep
from dyff import uploads

router = APIRouter(tags=["uploads"])


@router.put(
    "/v1/uploads/{account}/{ticket}",
    status_code=204,
    responses=responses(401, 404, 409, 413, 422),
)
async def upload(
    account: NameStr,
    ticket: NameStr,
    request: Request,
    state: StateDep,
    x_dyff_upload_token: Annotated[str, Header(max_length=256)],
) -> Response:
    """Receive the declared file for an upload ticket: once, checked against the
    declared size and sha256; nothing is stored when it does not match."""
    # Content-Length belongs to the HTTP layer; a malformed one never reaches us.
    length = request.headers.get("content-length", "")
    await run_in_threadpool(
        uploads.receive,
        state.records,
        state.blobs,
        account,
        ticket,
        x_dyff_upload_token,
        _sync_chunks(request),
        int(length) if length.isdigit() else None,
    )
    return Response(status_code=204)


def _sync_chunks(request: Request) -> Any:
    """Bridge the request's async body stream to the blocking blob store in a worker thread."""
    import anyio.from_thread

    stream = request.stream().__aiter__()

    def chunks() -> Any:
        while True:
            try:
                yield anyio.from_thread.run(stream.__anext__)  # type: ignore[arg-type]
            except StopAsyncIteration:
                return

    return chunks()
