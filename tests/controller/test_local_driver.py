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
from controller.reconcile import Result
from controller.reconcilers.common import WorkState
from dyff import accounts, layout
from dyff.schema import Dataset, Entity, EntityRef, Evaluation, Model
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories
from tests.controller.conftest import FakeWorkloads

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
    keys: list[tuple[str, str, str]] = []

    def announced(*key: str) -> None:
        keys.append(key)  # type: ignore[arg-type]
        exited.set()

    executor = LocalExecutor(
        "sqlite:///r.db", "file:///b", tmp_path, package=FAKES, on_exit=announced
    )
    try:
        started = time.monotonic()
        executor.start(("Dataset", "acme", "d1"), "ok", 1)  # type: ignore[arg-type]
        assert exited.wait(10), "the exit was never announced"
        assert time.monotonic() - started < 5.0
        assert executor.state(("Dataset", "acme", "d1")).phase == "succeeded"
        assert keys == [("Dataset", "acme", "d1")]  # which work exited, for its pass
    finally:
        executor.close()


@pytest.fixture
def fake_running(
    records: SqliteRecordStore, tmp_path: Path
) -> Iterator[tuple[LocalDriver, FakeWorkloads, list[tuple[str, str, str]]]]:
    """A driver with workloads that report at once, and the list of objects passed over."""
    blobs = FileBlobStore(tmp_path / "blobs")
    fake = FakeWorkloads(records, blobs)
    driver = LocalDriver(records, blobs, fake, interval=SLOW_TIMER)
    passed: list[tuple[str, str, str]] = []
    reconcile = driver._reconcile

    def counted(kind: type[Entity], account: str, name: str) -> Result | None:
        passed.append((kind.kind_name, account, name))
        return reconcile(kind, account, name)

    driver._reconcile = counted  # type: ignore[method-assign]
    records.on_write(driver.wake)
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    thread.start()
    eventually(lambda: driver.passes >= 1)
    yield driver, fake, passed
    stop.set()
    driver.wake()
    thread.join(10)


def upload(
    records: SqliteRecordStore, fake: FakeWorkloads, kind: type[Model] | type[Dataset]
) -> None:
    """The upload of the one `kind` of account acme lands, as in another process (no event)."""
    entity = records.get(kind, "acme", "m1" if kind is Model else "d1")
    source = entity.spec.source.upload
    assert source is not None
    fake.blobs.put(layout.upload_key("acme", kind.kind_name, entity.name, source.sha256), b"x" * 10)


def quiet(driver: LocalDriver, after: float) -> None:
    """Wait `after` seconds, then until no pass has run for half a second."""
    time.sleep(after)
    while True:
        before = driver.passes
        time.sleep(0.5)
        if driver.passes == before:
            return


def test_an_order_passes_over_its_own_objects_not_every_evaluation_kept(
    fake_running: tuple[LocalDriver, FakeWorkloads, list[tuple[str, str, str]]],
    records: SqliteRecordStore,
) -> None:
    """A user gating every commit keeps thousands of evaluations: an order must not pass
    over all of them, three times (its record, its start, its report)."""
    driver, fake, passed = fake_running
    records.create(factories.model("m1"))
    records.create(factories.dataset("d1"))
    eventually(lambda: records.get(Model, "acme", "m1").status.phase == "WaitingForUpload")
    upload(records, fake, Model)
    upload(records, fake, Dataset)
    kept = 150
    for i in range(kept):
        records.create(factories.evaluation(f"kept{i}"))
    driver.wake()  # everything once: the uploads, the evaluations kept
    eventually(
        lambda: records.get(Evaluation, "acme", f"kept{kept - 1}").status.phase == "Complete"
    )
    quiet(driver, after=2.5)  # their own writes and requeues (2 s after a start) done
    passed.clear()
    records.create(factories.evaluation("new"))
    eventually(lambda: records.get(Evaluation, "acme", "new").status.phase == "Complete")
    time.sleep(0.3)  # what the order's own writes wake
    assert set(passed) == {("Evaluation", "acme", "new")}, passed
    assert len(passed) <= 5, passed


@pytest.mark.parametrize("reader", ["acme", "bob"])
def test_a_model_that_settles_wakes_the_evaluations_waiting_for_it(
    records: SqliteRecordStore, tmp_path: Path, reader: str
) -> None:
    """The pass over a model that became Ready goes on to the evaluations waiting for it:
    of its own account, and of any account while it is public. (Without it they would
    wait for their own requeue, 2 s.)"""
    blobs = FileBlobStore(tmp_path / "blobs")
    driver = LocalDriver(records, blobs, FakeWorkloads(records, blobs), interval=SLOW_TIMER)
    for name in ("acme", "bob"):
        accounts.create_account(records, name)
    dataset = factories.dataset("d1", account=reader)
    records.create(dataset)
    assert dataset.spec.source.upload is not None
    blobs.put(
        layout.upload_key(reader, "Dataset", "d1", dataset.spec.source.upload.sha256), b"x" * 10
    )
    evaluation = factories.evaluation("e1", account=reader)
    evaluation.spec.model = EntityRef(name="m1", account="acme")
    records.create(evaluation)
    model = factories.model("m1")
    model.spec.public = True
    records.create(model)
    driver.reconcile_all()  # the dataset is Ready; the model waits for its upload
    driver.reconcile_all()
    assert records.get(Evaluation, reader, "e1").status.phase == "Pending"
    assert model.spec.source.upload is not None
    blobs.put(layout.upload_key("acme", "Model", "m1", model.spec.source.upload.sha256), b"x" * 10)
    driver.reconcile_keys([("Model", "acme", "m1")])  # it ingests and is Ready
    driver.reconcile_keys([("Model", "acme", "m1")])  # its report, as the write wakes it
    assert records.get(Evaluation, reader, "e1").status.phase == "Complete"
