"""The shim as Cloud Run and Kubernetes stop it: SIGTERM, then SIGKILL after the grace
period. A request in flight when SIGTERM arrives must finish (here: an upload whose body
is still arriving), no new connection is accepted, and the process exits on its own
within `DYFF_DRAIN_SECONDS` even when a client never finishes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dyff.runtime.serve import free_port

DRAIN_S = 4
CHUNK = b"x" * 65536
CHUNKS = 24


class Shim:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DYFF_DATA_DIR": str(tmp / "data"),
            "DYFF_DRAIN_SECONDS": str(DRAIN_S),
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
        }
        admin = subprocess.run(
            [sys.executable, "-m", "dyff.cli", "admin", "bootstrap", "--account", "root"],
            env=self.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        self.key = admin.stdout.strip().splitlines()[-1]
        self.log = tmp / "shim.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api_shim"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def ticket(self, name: str) -> tuple[str, dict[str, str]]:
        data = CHUNK * CHUNKS
        source = {
            "form": "bento",
            "upload": {"sha256": hashlib.sha256(data).hexdigest(), "sizeBytes": len(data)},
        }
        headers = {"authorization": f"Bearer {self.key}"}
        r = httpx.post(
            f"{self.url}/v1/models",
            json={"name": name, "spec": {"source": source}},
            headers=headers,
            timeout=30,
        )
        assert r.status_code == 201, r.text
        info = r.json()["upload"]
        return info["url"], {"X-Dyff-Upload-Token": info["token"], **info.get("headers", {})}


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[Shim]:
    s = Shim(tmp_path)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()
        s.proc.wait(10)


def _slow_body(started: threading.Event, pause: float) -> Iterator[bytes]:
    for i in range(CHUNKS):
        if i == 1:
            started.set()
        yield CHUNK
        time.sleep(pause)


def _upload_in_background(url: str, headers: dict[str, str], pause: float) -> tuple:
    started = threading.Event()
    result: dict[str, object] = {}

    def put() -> None:
        try:
            result["status"] = httpx.put(
                url, content=_slow_body(started, pause), headers=headers, timeout=60
            ).status_code
        except httpx.HTTPError as exc:
            result["error"] = repr(exc)

    thread = threading.Thread(target=put, daemon=True)
    thread.start()
    assert started.wait(30)
    return thread, result


def test_sigterm_lets_a_request_in_flight_finish(shim: Shim) -> None:
    url, headers = shim.ticket("drained")
    # The body takes ~1.2 s to arrive, well inside the drain period.
    thread, result = _upload_in_background(url, headers, pause=0.05)
    shim.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    assert result.get("status") == 204, (result, shim.log.read_text())
    # uvicorn re-raises the signal once drained: "ended by SIGTERM", not a crash.
    assert shim.proc.wait(DRAIN_S + 10) in (0, -signal.SIGTERM), shim.log.read_text()
    with pytest.raises(httpx.HTTPError):  # nothing listens any more
        httpx.get(f"{shim.url}/healthz", timeout=2)


def test_sigterm_exits_within_the_drain_period_whatever_clients_do(shim: Shim) -> None:
    url, headers = shim.ticket("stalled")
    # This body would take ~12 s: longer than the drain period.
    _thread, _result = _upload_in_background(url, headers, pause=0.5)
    t0 = time.monotonic()
    shim.proc.send_signal(signal.SIGTERM)
    shim.proc.wait(DRAIN_S + 10)
    took = time.monotonic() - t0
    assert took < DRAIN_S + 5, f"exited after {took:.1f} s; drain is {DRAIN_S} s"
