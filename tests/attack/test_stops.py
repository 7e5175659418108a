"""Stopping `dyff up` the ways machines stop it. SIGTERM (service managers, container
platforms) and SIGKILL of the `dyff up` process alone must leave no process of its family
— workloads, their reapers and their servers — a second `dyff up` on the same data must be
refused, and a restart must end what an earlier instance left, run one worker per entity
and sweep the work folders. The workloads are tests/attack/fake_workloads (as evaluate
runs: the real reaper, a server in a session of its own with a worker of its own); the
SQLite file of a restarted instance gives its free pages back."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from controller.executors.local import WORK_DIR_ENV, WORKER_FILE
from dyff.schema import Model
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories
from tests.attack.conftest import Up, start_up, stop_up

FAKE_UP = "tests.attack.fake_up"
WORKLOAD = "tests.attack.fake_workloads.ingest_dataset"


def eventually(check: Callable[[], object], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


def _live(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return False


def family(data_dir: Path, up_pid: int | None = None) -> list[psutil.Process]:
    """Every live process started for `data_dir`: children of the `dyff up` process and
    any process whose environment names the data folder (all of them inherit it)."""
    found: dict[int, psutil.Process] = {}
    if up_pid is not None:
        with contextlib.suppress(psutil.Error):
            found.update({c.pid: c for c in psutil.Process(up_pid).children(recursive=True)})
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("DYFF_DATA_DIR") == str(data_dir):
                found[proc.pid] = proc
    return [p for p in found.values() if _live(p)]


def workers(data_dir: Path, name: str) -> list[psutil.Process]:
    """Live workload processes for the dataset `name` (the local account's)."""
    out = []
    for proc in family(data_dir):
        with contextlib.suppress(psutil.Error):
            if WORKLOAD in proc.cmdline() and proc.environ().get(WORK_DIR_ENV, "").endswith(
                f"/{name}"
            ):
                out.append(proc)
    return out


def describe(procs: list[psutil.Process]) -> str:
    lines = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            lines.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
    return "\n".join(lines)


def start_fake(tmp: Path) -> Up:
    return start_up(tmp, extra_env={"FAKE_STARTS": str(tmp / "starts.txt")}, module=FAKE_UP)


def starts(tmp: Path, name: str) -> list[int]:
    path = tmp / "starts.txt"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines()]
    return [int(pid) for who, pid in lines if who == name]


def order_work(up: Up, name: str) -> None:
    """A Dataset with an upload: once its bytes arrive, `dyff up` starts its workload."""
    data = b"parquet bytes"
    source = {
        "form": "parquet",
        "upload": {"sha256": hashlib.sha256(data).hexdigest(), "sizeBytes": len(data)},
    }
    with up.client() as c:
        r = c.post("/v1/datasets", json={"name": name, "spec": {"source": source}})
        assert r.status_code == 201, r.text
        upload = r.json()["upload"]
        put = c.put(upload["url"], content=data, headers={"x-dyff-upload-token": upload["token"]})
        assert put.status_code == 204, put.text


def work_folder(up: Up, name: str) -> Path:
    return up.data_dir / "work" / "dataset" / "local" / name


def running_tree(up: Up, tmp: Path, name: str) -> list[psutil.Process]:
    """Order work and wait until its whole tree runs: workload, reaper, server, worker."""
    order_work(up, name)
    eventually(lambda: starts(tmp, name), what=f"{name} started\n{up.log_text()}")
    eventually(lambda: len(family(up.data_dir, up.proc.pid)) >= 4, what="the tree")
    return family(up.data_dir, up.proc.pid)


def assert_none_left(data_dir: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while left := family(data_dir):
        assert time.monotonic() < deadline, f"left running:\n{describe(left)}"
        time.sleep(0.1)


@pytest.fixture
def cleanup() -> Callable[[Up], Up]:
    """Whatever a test starts is stopped and its family killed, pass or fail."""
    started: list[Up] = []
    yield started.append  # type: ignore[misc]
    for up in started:
        with contextlib.suppress(Exception):
            stop_up(up, signal.SIGKILL)
        for p in family(up.data_dir):
            with contextlib.suppress(psutil.Error):
                p.kill()


def test_sigterm_stops_up_and_every_process_it_started(
    tmp_path: Path, cleanup: Callable[[Up], None]
) -> None:
    up = start_fake(tmp_path)
    cleanup(up)
    tree = running_tree(up, tmp_path, "d1")
    assert len(tree) >= 4, describe(tree)
    assert stop_up(up, signal.SIGTERM) == 0, up.log_text()
    assert "dyff stopped" in up.log_text()
    assert_none_left(up.data_dir, timeout=5)
    assert not (work_folder(up, "d1") / "scratch").exists()  # interrupted work's scratch


def test_a_second_up_on_the_same_data_is_refused(
    tmp_path: Path, cleanup: Callable[[Up], None]
) -> None:
    up = start_fake(tmp_path)
    cleanup(up)
    env = {
        **os.environ,
        "DYFF_DATA_DIR": str(up.data_dir),
        "DYFF_CONFIG": str(tmp_path / "second.json"),
    }
    second = subprocess.run(
        [sys.executable, "-m", "dyff.cli", "up", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert second.returncode != 0
    assert "another `dyff up`" in second.stderr and str(up.proc.pid) in second.stderr
    assert up.proc.poll() is None  # the first runs on
    with up.client() as c:
        assert c.get("/healthz").status_code == 200


def test_sigkill_of_up_alone_leaves_nothing_and_a_restart_sweeps(
    tmp_path: Path, cleanup: Callable[[Up], None]
) -> None:
    up = start_fake(tmp_path)
    cleanup(up)
    running_tree(up, tmp_path, "d1")
    running_tree(up, tmp_path, "gone")
    first = starts(tmp_path, "d1")
    old_scratch = work_folder(up, "d1") / "scratch"
    assert any(old_scratch.iterdir())
    up.proc.kill()  # the `dyff up` process alone
    up.proc.wait(10)
    assert_none_left(up.data_dir, timeout=10)

    # What a platform without a parent-death signal would leave: a worker still running
    # (its identity in worker.json, its work folder in its environment) ...
    folder = work_folder(up, "d1")
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={**os.environ, "DYFF_DATA_DIR": str(up.data_dir), WORK_DIR_ENV: str(folder)},
        start_new_session=True,
    )
    info = {"pid": stray.pid, "createTime": psutil.Process(stray.pid).create_time()}
    (folder / WORKER_FILE).write_text(json.dumps(info))
    # ... and the folder of an entity deleted while `dyff up` was down.
    with sqlite3.connect(up.data_dir / "records.db") as db:
        db.execute("DELETE FROM records WHERE kind='Dataset' AND name='gone'")
    db.close()
    ghost = work_folder(up, "gone")
    assert (ghost / "log.txt").exists()

    again = start_fake(tmp_path)
    cleanup(again)
    assert stray.wait(10) is not None  # ended before any work started again
    assert not ghost.exists()
    eventually(lambda: len(starts(tmp_path, "d1")) > len(first), what="d1 resumed")
    assert not any(
        (old_scratch / f"weights-{pid}.bin").exists() for pid in first
    )  # the interrupted run's scratch went
    assert (folder / "log.txt").exists()  # the log of an existing entity stays
    for _ in range(20):  # never two workers for one entity
        assert len(workers(again.data_dir, "d1")) <= 1
        time.sleep(0.1)
    assert len(starts(tmp_path, "d1")) == len(first) + 1

    # Deleting the entity stops its work and removes its work folder.
    with again.client() as c:
        assert c.delete("/v1/datasets/d1").status_code in (200, 202, 204)
    eventually(lambda: not folder.exists(), what="d1's work folder removed")
    eventually(lambda: not workers(again.data_dir, "d1"), what="d1's worker stopped")
    assert stop_up(again, signal.SIGTERM) == 0, again.log_text()
    assert_none_left(again.data_dir, timeout=5)


def test_a_restart_gives_the_sqlite_files_free_pages_back(
    tmp_path: Path, cleanup: Callable[[Up], None]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "records.db"
    # A records file as older versions made it (no auto-vacuum), bloated by deletes.
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA auto_vacuum=NONE")
        db.execute("CREATE TABLE IF NOT EXISTS padding (x)")
    db.close()
    store = SqliteRecordStore(path)

    def big(m: Model) -> None:
        m.status.message = "z" * 200_000

    for i in range(100):
        store.create(factories.model(f"m{i}"))
        store.mutate(Model, "acme", f"m{i}", big)
    for i in range(100):
        store.delete(Model, "acme", f"m{i}")
    store._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    bloated = path.stat().st_size
    assert bloated > 15_000_000

    up = start_fake(tmp_path)
    cleanup(up)
    assert path.stat().st_size < 2_000_000, (path.stat().st_size, bloated)
    assert stop_up(up, signal.SIGTERM) == 0
