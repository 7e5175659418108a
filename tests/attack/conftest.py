"""The attack suite's target: a real `dyff up` process over HTTP, as an attacker or an
unlucky user meets it. One per module (tests in a module share its state); each test
that needs a clean slate uses its own account (`account` fixture)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dyff.runtime.serve import free_port

_accounts = itertools.count(1)


@dataclass
class Up:
    """A running `dyff up`: its URL, its local account's key, an admin key (made with
    `dyff admin bootstrap` on the same data), its data folder and log."""

    url: str
    key: str
    admin_key: str
    data_dir: Path
    proc: subprocess.Popen[str]
    log: Path

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {key or self.key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_up(
    tmp: Path,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    module: str = "dyff.cli",
) -> Up:
    """Start `dyff up` (`python -m MODULE up`) on a free port over `tmp`, wait until it
    answers."""
    port = port or free_port()
    env = {
        **os.environ,
        "DYFF_DATA_DIR": str(tmp / "data"),
        "DYFF_CONFIG": str(tmp / "config.json"),
        "HF_HUB_OFFLINE": "1",
        "BENTOML_DO_NOT_TRACK": "true",
        **(extra_env or {}),
    }
    log = tmp / f"up-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "up", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"dyff up exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"dyff up did not answer:\n{log.read_text()}")
        time.sleep(0.2)
    key = json.loads((tmp / "config.json").read_text())["apiKey"]
    admin = subprocess.run(
        [sys.executable, "-m", "dyff.cli", "admin", "bootstrap", "--account", "root"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    admin_key = admin.stdout.strip().splitlines()[-1] if admin.returncode == 0 else ""
    return Up(url, key, admin_key, tmp / "data", proc, log)


def stop_up(up: Up, sig: int = signal.SIGINT) -> int:
    if up.proc.poll() is None:
        up.proc.send_signal(sig)
        try:
            up.proc.wait(60)
        except subprocess.TimeoutExpired:
            up.proc.kill()
            up.proc.wait(10)
    return up.proc.returncode


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    target = start_up(tmp_path_factory.mktemp("attack-up"))
    yield target
    stop_up(target)


@dataclass(frozen=True)
class Account:
    name: str
    key: str


def new_account(up: Up) -> Account:
    """A fresh account and its first key, made through the API with the admin key."""
    name = f"atk{next(_accounts)}"
    with up.client(up.admin_key) as c:
        r = c.post("/v1/accounts", json={"name": name})
        assert r.status_code == 201, r.text
    return Account(name, r.json()["token"])


@pytest.fixture
def account(up: Up) -> Account:
    """An account of its own for a test that needs a clean slate."""
    return new_account(up)
