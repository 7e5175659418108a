"""`dyff up`'s controller is event-driven: a record written in its process or a workload
exiting starts a pass at once, not at the next tick of its (slow) safety-net timer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.executors.local import LocalExecutor
from controller.local import LocalDriver
from controller.reconcilers.common import WorkState
from dyff.schema import Model
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories

FAKES = "tests.controller.fake_workloads"
SLOW_TIMER = 60.0  # if anything waits for the timer, the test times out


def eventually(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time an event should take"
        time.sleep(0.01)


class NoWork:
    runs_containers = False

    def state(self, key: object) -> WorkState:
        return WorkState()

    def start(self, *_: object) -> None:
        pass

    def stop(self, key: object) -> None:
        pass

    def work_keys(self) -> list[tuple[str, str, str]]:
        return []

    def close(self) -> None:
        pass


@pytest.fixture
def records(tmp_path: Path) -> SqliteRecordStore:
    return SqliteRecordStore(tmp_path / "records.db")


@pytest.fixture
def running(records: SqliteRecordStore, tmp_path: Path) -> Iterator[LocalDriver]:
    driver = LocalDriver(records, FileBlobStore(tmp_path / "blobs"), NoWork(), interval=SLOW_TIMER)
    records.on_write(driver.wake)
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    thread.start()
    eventually(lambda: driver.passes >= 1)
    yield driver
    stop.set()
    driver.wake()
    thread.join(10)


def test_a_record_written_in_the_process_starts_a_pass_at_once(
    running: LocalDriver, records: SqliteRecordStore
) -> None:
    started = time.monotonic()
    records.create(factories.model("m1"))  # as the shim does, through the same store
    eventually(lambda: records.get(Model, "acme", "m1").status.phase == "WaitingForUpload")
    assert time.monotonic() - started < 2.0


def test_without_events_the_driver_sleeps(running: LocalDriver) -> None:
    """Its own writes wake it once more; then nothing happens, so it does not pass."""
    time.sleep(0.5)
    settled = running.passes
    time.sleep(0.5)
    assert running.passes == settled


def test_a_workload_that_exits_is_noticed_within_a_moment(tmp_path: Path) -> None:
    exited = threading.Event()
    executor = LocalExecutor(
        "sqlite:///r.db", "file:///b", tmp_path, package=FAKES, on_exit=exited.set
    )
    try:
        started = time.monotonic()
        executor.start(("Dataset", "acme", "d1"), "ok", 1)  # type: ignore[arg-type]
        assert exited.wait(10), "the exit was never announced"
        assert time.monotonic() - started < 5.0
        assert executor.state(("Dataset", "acme", "d1")).phase == "succeeded"
    finally:
        executor.close()
