"""The client puts every name into a URL as one escaped path segment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from dyff.client import Client, ClientConfig

NAMES = ["../keys", "..", ".", "a/b", "../../v1/keys/k1", "x?y=1#z", "%2e%2e", "a b", "ü"]


@pytest.mark.parametrize("name", NAMES)
def test_every_name_stays_one_segment(name: str) -> None:
    seen: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path)
        return httpx.Response(200, json={"items": [], "labels": []})

    client = Client(ClientConfig("http://dyff.test", "k"))
    client.http = httpx.Client(base_url="http://dyff.test", transport=httpx.MockTransport(answer))
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("/v1/models/", lambda: client.get("models", name)),
        ("/v1/datasets/", lambda: client.delete("datasets", name)),
        ("/v1/evaluations/", lambda: client.metrics(name)),
        ("/v1/evaluations/", lambda: client.predictions(name)),
        ("/v1/evaluations/", lambda: client.report(name)),
    ]
    for prefix, call in calls:
        seen.clear()
        call()
        (raw,) = seen
        path = raw.split(b"?")[0].decode()
        assert path.startswith(prefix), path
        segment = path[len(prefix) :].split("/")[0]
        assert "/" not in name or "%2F" in segment
        assert segment not in (".", "..") and "?" not in segment and "#" not in segment
        assert unquote(segment) == name
