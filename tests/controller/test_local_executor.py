"""The local executor on its own: workloads as processes, reported states, a bounded number
running at once, and stopping that takes a workload's children too."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from controller.executors.guard import GUARD_MODULE, guards_of
from controller.executors.local import (
    WORK_DIR_ENV,
    WORKER_FILE,
    LocalExecutor,
    die_with_parent,
)

FAKES = "tests.controller.fake_workloads"


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[LocalExecutor]:
    ex = LocalExecutor("sqlite:///r.db", "file:///b", tmp_path, max_parallel=1, package=FAKES)
    yield ex
    ex.close()


def eventually(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_states_follow_the_exit_code(
    executor: LocalExecutor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    executor.max_parallel = 3
    for name, workload in (("a", "ok"), ("b", "bad_input"), ("c", "crash")):
        executor.start(("Dataset", "acme", name), workload, 7)  # type: ignore[arg-type]
    eventually(lambda: all(executor.state(("Dataset", "acme", n)).phase != "running"
                           for n in "abc"))  # fmt: skip
    ok, bad, crash = (executor.state(("Dataset", "acme", n)) for n in "abc")
    assert (ok.phase, ok.generation) == ("succeeded", 7)
    assert bad.phase == "succeeded"  # bad input is reported in status by the workload
    assert crash.phase == "failed" and "code 3" in crash.message
    # The workload's own words (a traceback, paths) go to the server's log only.
    assert "something broke" not in crash.message and str(tmp_path) not in crash.message
    assert "something broke" in caplog.text
    assert executor.state(("Dataset", "acme", "never")).phase == "none"
    config = json.loads((tmp_path / "dataset" / "acme" / "a" / "config.json").read_text())
    assert config["account"] == "acme" and config["name"] == "a"
    assert config["recordsUrl"] == "sqlite:///r.db" and config["blobsUrl"] == "file:///b"


def _alive(executor: LocalExecutor) -> int:
    return sum(1 for w in executor._work.values() if w.proc is not None and w.proc.poll() is None)


def test_at_most_max_parallel_run_and_the_rest_wait(executor: LocalExecutor) -> None:
    keys = [("Evaluation", "acme", f"e{i}") for i in range(3)]
    for key in keys:
        executor.start(key, "spawn", 1)  # type: ignore[arg-type]
    assert all(executor.state(k).phase == "running" for k in keys)  # waiting counts as running
    assert _alive(executor) == 1
    executor.stop(keys[0])
    executor.state(keys[1])  # a state query lets the next one in
    assert _alive(executor) == 1 and executor._work[keys[1]].proc is not None
    assert executor.state(keys[0]).phase == "none"


def test_stop_takes_the_workloads_children(executor: LocalExecutor, tmp_path: Path) -> None:
    key = ("Evaluation", "acme", "e")
    executor.start(key, "spawn", 1)  # type: ignore[arg-type]
    pid_file = tmp_path / "evaluation" / "acme" / "e" / "pid"
    eventually(pid_file.is_file)
    child = psutil.Process(int(pid_file.read_text()))
    proc = executor._work[key].proc
    assert proc is not None
    executor.stop(key)
    assert proc.poll() is not None
    eventually(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE)


def test_a_restart_replaces_the_running_one(executor: LocalExecutor) -> None:
    key = ("Evaluation", "acme", "e")
    executor.start(key, "spawn", 1)  # type: ignore[arg-type]
    first = executor._work[key].proc
    executor.start(key, "spawn", 2)  # type: ignore[arg-type]
    assert first is not None and first.poll() is not None
    assert executor.state(key).generation == 2 and _alive(executor) == 1
    executor.close()
    assert executor.work_keys() == [] and _alive(executor) == 0


def test_ended_work_keeps_its_log_not_its_scratch(executor: LocalExecutor, tmp_path: Path) -> None:
    key = ("Model", "acme", "m")
    folder = tmp_path / "model" / "acme" / "m"
    executor.start(key, "scratchy", 1)  # type: ignore[arg-type]
    eventually(lambda: executor.state(key).phase == "succeeded")
    assert not (folder / "scratch").exists() and not (folder / WORKER_FILE).exists()
    assert "scratchy done" in (folder / "log.txt").read_text()
    executor.stop(key)  # the entity is deleted: everything goes
    assert not folder.exists()


def test_stopped_and_closed_work_leave_no_scratch(executor: LocalExecutor, tmp_path: Path) -> None:
    executor.max_parallel = 2
    a, b = ("Evaluation", "acme", "a"), ("Evaluation", "acme", "b")
    for key in (a, b):
        executor.start(key, "spawn", 1)  # type: ignore[arg-type]
        (tmp_path / "evaluation" / "acme" / key[2] / "scratch").mkdir()
    worker = json.loads((tmp_path / "evaluation" / "acme" / "a" / WORKER_FILE).read_text())
    assert psutil.Process(worker["pid"]).create_time() == worker["createTime"]
    executor.stop(a)
    assert not (tmp_path / "evaluation" / "acme" / "a").exists()
    executor.close()
    assert not (tmp_path / "evaluation" / "acme" / "b" / "scratch").exists()
    assert (tmp_path / "evaluation" / "acme" / "b" / "log.txt").exists()


def test_recover_kills_leftovers_by_identity(tmp_path: Path) -> None:
    folder = tmp_path / "evaluation" / "acme" / "e"
    folder.mkdir(parents=True)
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    named = subprocess.Popen(sleep, start_new_session=True)
    (folder / WORKER_FILE).write_text(
        json.dumps({"pid": named.pid, "createTime": psutil.Process(named.pid).create_time()})
    )
    marked = subprocess.Popen(sleep, env={**os.environ, WORK_DIR_ENV: str(folder.resolve())})
    # A pid whose start time does not match is someone else's: left alone.
    other = subprocess.Popen(sleep)
    (tmp_path / "evaluation" / "acme" / "x").mkdir()
    (tmp_path / "evaluation" / "acme" / "x" / WORKER_FILE).write_text(
        json.dumps({"pid": other.pid, "createTime": 1.0})
    )
    try:
        ex = LocalExecutor("sqlite:///r.db", "file:///b", tmp_path, package=FAKES)
        assert ex.recover() == 2
        assert named.wait(10) is not None and marked.wait(10) is not None
        assert other.poll() is None
        ex.close()
    finally:
        for p in (named, marked, other):
            p.kill()
            p.wait()


def test_recover_ends_an_earlier_instances_guard_first(tmp_path: Path) -> None:
    """A guard of an instance that died may still be sweeping when the next one starts:
    it would take the new instance's first processes (marked alike) for its own. recover
    ends it; a guard of another work folder is left alone."""
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    guards = []
    for watched in (tmp_path, other_dir):
        # A guard whose executor is gone but which has not finished: its stdin stays open.
        guards.append(
            subprocess.Popen(
                [sys.executable, "-m", GUARD_MODULE, str(watched)], stdin=subprocess.PIPE
            )
        )
    try:
        eventually(lambda: all(len(guards_of(d)) == 1 for d in (tmp_path, other_dir)))
        ex = LocalExecutor("sqlite:///r.db", "file:///b", tmp_path, package=FAKES)
        ex.recover()
        assert guards[0].wait(10) is not None
        assert guards[1].poll() is None
        ex.close()
    finally:
        for g in guards:
            g.kill()
            g.wait()


def test_sweep_removes_what_no_entity_owns(tmp_path: Path) -> None:
    for name in ("kept", "gone"):
        folder = tmp_path / "dataset" / "acme" / name
        (folder / "scratch").mkdir(parents=True)
        (folder / "log.txt").write_text("log")
    ex = LocalExecutor("sqlite:///r.db", "file:///b", tmp_path, package=FAKES)
    removed = ex.sweep([("Dataset", "acme", "kept")])
    ex.close()
    assert removed == [tmp_path / "dataset" / "acme" / "gone"]
    assert (tmp_path / "dataset" / "acme" / "kept" / "log.txt").exists()
    assert not (tmp_path / "dataset" / "acme" / "kept" / "scratch").exists()


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_workloads_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    if die_with_parent() is None:
        pytest.skip("no parent-death signal on this platform")
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from controller.executors.local import LocalExecutor\n"
        f"ex = LocalExecutor('sqlite:///r.db', 'file:///b', Path({str(tmp_path)!r}),"
        f" package={FAKES!r})\n"
        "ex.start(('Evaluation', 'acme', 'e'), 'spawn', 1)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    folder = tmp_path / "evaluation" / "acme" / "e"
    try:
        eventually((folder / "pid").is_file)
        worker = psutil.Process(json.loads((folder / WORKER_FILE).read_text())["pid"])
        child = psutil.Process(int((folder / "pid").read_text()))  # the workload's own
        parent.kill()  # SIGKILL: no finally, no atexit
        parent.wait()
        for proc in (worker, child):
            eventually(functools.partial(_gone, proc))
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.parametrize(
    ("runtime", "available", "runs"),
    [("docker", True, True), ("podman", True, True), (None, False, False)],
)
def test_image_models_run_locally_where_an_engine_works(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    runtime: str | None,
    available: bool,
    runs: bool,
) -> None:
    from dyff import models

    support = models.ImageSupport(available, runtime, "test")
    monkeypatch.setattr(models, "local_image_support", lambda: support)
    ex = LocalExecutor("sqlite:///r.db", "file:///b", tmp_path, package=FAKES)
    try:
        assert ex.runs_containers is runs
    finally:
        ex.close()
