"""What keeps the record sync up with a busy record store: exact per-object locks, push
slots taken only by pushes that can work, feeds read side by side, and kopf handlers
that trust the sync instead of reading back the record it just pushed."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from controller.kopf_adapter import Controller
from controller.kube import KubeApi
from controller.sync import KeyLocks, RecordSync, adopt
from dyff.schema import Evaluation
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore, StoredDoc
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories
from tests.controller.conftest import EVALUATIONS, FakeWorkloads, eventually, kubectl_patch
from tests.controller.kmock_cluster import Cluster

E1 = "/apis/dyff.io/v1alpha1/namespaces/acme/evaluations/e1"
KEY = ("Evaluation", "acme", "e1")


async def nothing_to_finalize(*_: Any) -> None:
    raise AssertionError("nothing is being deleted here")


async def test_an_objects_lock_never_holds_up_another_object() -> None:
    locks = KeyLocks()
    release = asyncio.Event()
    entered = 0

    async def hold(key: tuple[str, str, str]) -> None:
        nonlocal entered
        async with locks.of(key):
            entered += 1
            await release.wait()

    # Thousands of objects in passes (or waiting for the record store) at once...
    holders = [asyncio.create_task(hold(("Evaluation", "a", f"busy-{i}"))) for i in range(3000)]
    await eventually(lambda: entered == 3000)
    # ...and every other object's push still goes through at once.
    for i in range(200):
        async with asyncio.timeout(1):
            async with locks.of(("Evaluation", "a", f"free-{i}")):
                pass
    release.set()
    await asyncio.gather(*holders)
    assert len(locks) == 0  # nothing kept for objects no one holds


async def test_one_object_at_a_time_per_key() -> None:
    locks = KeyLocks()
    inside: list[int] = []
    most = 0

    async def work(n: int) -> None:
        nonlocal most
        async with locks.of(KEY):
            inside.append(n)
            most = max(most, len(inside))
            await asyncio.sleep(0.01)
            inside.remove(n)

    await asyncio.gather(*(work(n) for n in range(5)))
    assert most == 1 and len(locks) == 0


async def test_a_push_waiting_behind_a_pass_leaves_its_slot_to_other_objects(
    cluster: Cluster, records: RecordStore
) -> None:
    records.create(factories.evaluation("e1"))
    records.create(factories.evaluation("e2"))
    locks = KeyLocks()
    sync = RecordSync(
        records,
        KubeApi(host=cluster.api_url),
        locks=locks,
        finalize=nothing_to_finalize,
        concurrency=1,
    )
    release = asyncio.Event()
    held = asyncio.Event()

    async def a_long_pass() -> None:
        async with locks.of(KEY):
            held.set()
            await release.wait()

    passing = asyncio.create_task(a_long_pass())
    await held.wait()
    assert await sync.poll_once(wait=False) == 2
    # One slot, and e1's push waits for e1's pass: e2's push must not wait with it.
    await eventually(lambda: cluster.read(EVALUATIONS, "acme", "e2"), timeout=5)
    assert cluster.read(EVALUATIONS, "acme", "e1") is None
    release.set()
    await passing
    await sync.drain()
    assert cluster.read(EVALUATIONS, "acme", "e1") is not None
    sync.close()


class BarrierStore(SqliteRecordStore):
    """Every feed read waits until `parties` of them are under way at once."""

    def __init__(self, path: Path, parties: int) -> None:
        super().__init__(path)
        self.barrier = threading.Barrier(parties, timeout=5)

    def _changed_heads(self, kind: str, position: int, limit: int) -> list[tuple[int, str, str]]:
        self.barrier.wait()
        return super()._changed_heads(kind, position, limit)


async def test_the_kinds_feeds_are_read_side_by_side(cluster: Cluster, tmp_path: Path) -> None:
    sync = RecordSync(
        BarrierStore(tmp_path / "records.db", parties=3),  # Model, Dataset, Evaluation
        KubeApi(host=cluster.api_url),
        locks=KeyLocks(),
        finalize=nothing_to_finalize,
    )
    sync.records.create(factories.evaluation("e1"))
    # One kind after the other would break the barrier (BrokenBarrierError).
    assert await sync.poll_once() == 1
    assert cluster.read(EVALUATIONS, "acme", "e1") is not None
    sync.close()


class CountingStore(SqliteRecordStore):
    """Counts record reads as Datastore round trips: one per single read, one per batch."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.reads = 0
        self.batches = 0

    def _read(self, kind: str, account: str, name: str) -> StoredDoc | None:
        self.reads += 1
        return self._select(self._conn(), kind, account, name)

    def _read_many(self, keys: list[tuple[str, str, str]]) -> list[StoredDoc | None]:
        self.batches += 1
        return [self._select(self._conn(), *key) for key in keys]


async def synced_e1(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> tuple[Controller, Evaluation, Any]:
    """A controller, evaluation e1 created in the records, and its CR as the sync made it."""
    controller = Controller(
        records, blobs, FakeWorkloads(records, blobs), KubeApi(host=cluster.api_url)
    )
    created, _ = records.create(factories.evaluation("e1"))
    await controller.sync.poll_once()
    return controller, created, cluster.read(EVALUATIONS, "acme", "e1")


async def test_adopting_a_cr_the_sync_made_reads_no_record(
    cluster: Cluster, tmp_path: Path, blobs: BlobStore
) -> None:
    records = CountingStore(tmp_path / "records.db")
    controller, _, cr = await synced_e1(cluster, records, blobs)
    known = controller.sync.agreed[KEY]

    records.reads = 0
    assert adopt(records, Evaluation, cr, known) == "known"
    assert records.reads == 0
    assert adopt(records, Evaluation, cr) == "unchanged"  # what a read would have found
    assert records.reads == 1

    # A user's edit of the CR is no longer what the sync made: adopted as before.
    edited = await kubectl_patch(cluster, E1, {"spec": {"inference": {"topK": 3}}})
    assert adopt(records, Evaluation, edited, known) == "updated"
    assert records.get(Evaluation, "acme", "e1").spec.inference.top_k == 3
    controller.close()


async def test_a_record_gone_behind_the_syncs_back_is_brought_back_by_its_cr(
    cluster: Cluster, records: RecordStore, blobs: BlobStore
) -> None:
    controller, created, cr = await synced_e1(cluster, records, blobs)
    assert KEY in controller.sync.agreed

    records.delete(Evaluation, "acme", "e1")  # not marked deleting: nothing tells the sync
    await controller.on_cr(Evaluation, cr)
    again = records.get(Evaluation, "acme", "e1")
    assert again.spec == created.spec
    assert again.status.phase == "Pending"  # and reconciled (its model does not exist)
    controller.close()


async def test_a_handled_event_reads_the_record_once_and_its_status_comes_by_the_feed(
    cluster: Cluster, tmp_path: Path, blobs: BlobStore
) -> None:
    records = CountingStore(tmp_path / "records.db")
    controller, _, cr = await synced_e1(cluster, records, blobs)

    records.reads = records.batches = 0
    await controller.on_cr(Evaluation, cr)  # kopf's create handler
    # The pass's own reads only (the record; its model and dataset in one batch): no
    # adoption read, no read back of the status it wrote.
    assert (records.reads, records.batches) == (1, 1)
    assert records.get(Evaluation, "acme", "e1").status.phase == "Pending"
    assert await controller.sync.poll_once() == 1
    assert cluster.read(EVALUATIONS, "acme", "e1")["status"]["phase"] == "Pending"
    controller.close()
