"""The local executor on its own: workloads as processes, reported states, a bounded number
running at once, and stopping that takes a workload's children too."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from controller.executors.local import LocalExecutor

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


def test_states_follow_the_exit_code(executor: LocalExecutor, tmp_path: Path) -> None:
    executor.max_parallel = 3
    for name, workload in (("a", "ok"), ("b", "bad_input"), ("c", "crash")):
        executor.start(("Dataset", "acme", name), workload, 7)  # type: ignore[arg-type]
    eventually(lambda: all(executor.state(("Dataset", "acme", n)).phase != "running"
                           for n in "abc"))  # fmt: skip
    ok, bad, crash = (executor.state(("Dataset", "acme", n)) for n in "abc")
    assert (ok.phase, ok.generation) == ("succeeded", 7)
    assert bad.phase == "succeeded"  # bad input is reported in status by the workload
    assert crash.phase == "failed" and "exit 3" in crash.message
    assert "something broke" in crash.message
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
