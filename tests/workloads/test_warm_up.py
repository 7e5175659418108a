"""Warm model servers through a real `dyff up` over HTTP: the second evaluation of a model
uses the server the first one started, timings are in the status, and no warm server
outlives `dyff up` — stopped, killed, or killed with its guard (then the next start ends
it)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from controller.executors.guard import WORK_DIR_ENV, leftovers
from tests.attack.conftest import Up, start_up, stop_up
from tests.workloads.dataset_fixtures import write_parquet
from tests.workloads.evaluation_fixtures import heldout_examples

pytestmark = pytest.mark.slow


def warm_servers(data_dir: Path) -> list[psutil.Process]:
    """Live processes of `dyff up`'s warm servers over `data_dir` (marked with their
    folder under work/warm)."""
    root = str((data_dir / "work" / "warm").resolve())
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (proc.environ().get(WORK_DIR_ENV) or "").startswith(root) and (
                proc.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(proc)
    return found


def gone(procs: list[psutil.Process], within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        live = []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    live.append(p)
        if not live:
            return True
        time.sleep(0.2)
    return False


def nothing_left(data_dir: Path, within: float = 15.0) -> bool:
    """No process started for the work folder (workloads, the spare evaluate process, warm
    servers and their workers) is left."""
    deadline = time.monotonic() + within
    while leftovers(data_dir / "work"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def evaluate(up: Up, name: str, dataset: str, top_k: int = 5) -> dict:
    from dyff.client import Client, ClientConfig

    with Client(ClientConfig(server=up.url, api_key=up.key)) as c:
        c.order("tiny", dataset, name=name, top_k=top_k)
        ev = c.wait("evaluations", name, timeout=600, interval=0.2)
    assert ev["status"]["phase"] == "Complete", ev["status"]
    return dict(ev["status"])


def started_servers(up: Up, within: float = 120.0) -> list[psutil.Process]:
    """The warm servers once one is ready: after a cold evaluation (its model run in the
    workload), the pool starts the model's server in the background."""
    deadline = time.monotonic() + within
    while True:
        servers = warm_servers(up.data_dir)
        if any(_ready(p) for p in servers):
            return servers
        assert time.monotonic() < deadline, "no warm server after the evaluation"
        time.sleep(0.2)


def _ready(proc: psutil.Process) -> bool:
    """A `bentoml serve` answering /readyz on the port it listens on."""
    import httpx

    with contextlib.suppress(psutil.Error):
        for conn in proc.net_connections(kind="tcp"):  # psutil >= 6 (pyproject)
            if conn.status == psutil.CONN_LISTEN:
                with contextlib.suppress(httpx.HTTPError):
                    url = f"http://127.0.0.1:{conn.laddr.port}/readyz"
                    if httpx.get(url, timeout=2).status_code == 200:
                        return True
    return False


def guard_of(up: Up) -> psutil.Process:
    [guard] = [
        p
        for p in psutil.Process(up.proc.pid).children()
        if "controller.executors.guard" in " ".join(p.cmdline())
    ]
    return guard


def test_warm_servers_through_dyff_up(
    tmp_path: Path, tiny_model_dir: Path, tiny_bento: Path
) -> None:
    from dyff.client import Client, ClientConfig

    env = {"DYFF_WARM_IDLE_S": "300", "DYFF_WARM_MAX": "2"}
    up = start_up(tmp_path, extra_env=env)
    data_dir = up.data_dir
    try:
        examples = heldout_examples()
        with Client(ClientConfig(server=up.url, api_key=up.key)) as c:
            c.register_upload("models", "tiny", "transformers", tiny_model_dir)
            for i, rows in enumerate((examples[:60], examples[60:120], examples[120:180])):
                data = write_parquet(tmp_path / f"d{i}.parquet", rows)
                c.register_upload("datasets", f"d{i}", "parquet", data)
            assert c.wait("models", "tiny", timeout=600)["status"]["phase"] == "Ready"
            for i in range(3):
                c.wait("datasets", f"d{i}", timeout=300)

        # Cold: the model runs in the workload; the pool then starts its server for later.
        cold = evaluate(up, "cold", "d0")
        assert cold["timings"]["modelStartS"] > 0, cold["timings"]
        servers = started_servers(up)
        warm = evaluate(up, "warm", "d1")
        assert warm["timings"]["modelStartS"] == 0, warm["timings"]
        assert {p.pid for p in warm_servers(data_dir)} == {p.pid for p in servers}
        assert "the model server" not in up.log_text()

        # Stopped: its servers go with it.
        stop_up(up)
        assert gone(servers), "a warm server outlived `dyff up`'s shutdown"
        assert nothing_left(data_dir), "a process of the work folder outlived the shutdown"

        # Killed (SIGKILL): its guard ends them.
        up = start_up(tmp_path, port=None, extra_env=env)
        evaluate(up, "again", "d2")
        servers = started_servers(up)
        os.kill(up.proc.pid, signal.SIGKILL)
        up.proc.wait(10)
        assert gone(servers), "a warm server outlived a killed `dyff up`"
        assert nothing_left(data_dir), "a process (the spare?) outlived a killed `dyff up`"

        # Killed with its guard: the server is left, and the next start ends it.
        up = start_up(tmp_path, extra_env=env)
        evaluate(up, "top3", "d0", top_k=3)  # another setting: another server
        servers = started_servers(up)
        guard = guard_of(up)
        guard.kill()
        assert gone([guard], within=10)
        os.kill(up.proc.pid, signal.SIGKILL)
        up.proc.wait(10)
        time.sleep(1)
        assert not gone(servers, within=0.5), "expected the server to be left"
        up = start_up(tmp_path, extra_env=env)
        assert gone(servers, within=5), "the next `dyff up` left the old warm server"
        assert "stopped" in up.log_text() and "left by a previous dyff up" in up.log_text()
    finally:
        stop_up(up)
    assert not warm_servers(data_dir)
