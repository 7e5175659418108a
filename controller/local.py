"""The local driver: the same reconcilers on one machine, against the record store
directly (no custom resources), with workloads as local processes.

It passes over the objects that something happened to — `wake(kind, account, name)`: a
record written in this process (the shim's), a workload exited (its report is in) — and,
after a Model or Dataset settles, over the evaluations that wait for it.
An object whose pass asked to be looked at again later (`requeue_after`) gets its own pass
then. A pass over every object runs at start, when a write of another kind may concern any
of them (an upload ticket, an account), and every `interval` seconds as a safety net for
what no event announces. So the cost of an order does not grow with the number of
evaluations kept."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from controller.executors import Executor, WorkKey
from controller.reconcile import KINDS, Result, reconcile_one
from controller.reconcilers.evaluation import waiting_for
from dyff.schema import Account, Dataset, Entity, Evaluation, Model, UploadTicket
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

log = logging.getLogger("dyff.controller.local")

KIND_BY_NAME: dict[str, type[Entity]] = {kind.kind_name: kind for kind in KINDS}
# Writes of these kinds may concern any object (an upload landing, an account deleted):
# they start a pass over everything. Writes of other kinds (API keys, idempotency
# records) concern no reconciler.
WAKE_EVERYTHING = frozenset({UploadTicket.kind_name, Account.kind_name})


class LocalDriver:
    def __init__(
        self,
        records: RecordStore,
        blobs: BlobStore,
        executor: Executor,
        interval: float = 10.0,
        min_gap: float = 0.1,
    ) -> None:
        self.records = records
        self.blobs = blobs
        self.executor = executor
        self.interval = interval  # between passes over everything (the safety net)
        # However busy the shim is, at most one pass per min_gap: writes arriving
        # meanwhile are taken by the next pass together.
        self.min_gap = min_gap
        self._woken = threading.Event()
        self._lock = threading.Lock()
        self._dirty: set[WorkKey] = set()
        self._everything = True  # the first pass covers every object
        self._requeues: dict[WorkKey, float] = {}  # key -> when (time.monotonic)
        self.passes = 0

    def wake(self, *key: str) -> None:
        """Run a pass now: of the object `key` = (kind, account, name) when given (a
        record write, a workload's exit), of everything when no key is."""
        with self._lock:
            if len(key) != 3:
                self._everything = True
            elif key[0] in KIND_BY_NAME:
                self._dirty.add((key[0], key[1], key[2]))
            elif key[0] in WAKE_EVERYTHING:
                self._everything = True
            else:
                return
        self._woken.set()

    def _reconcile(self, kind: type[Entity], account: str, name: str) -> Result | None:
        try:
            result = reconcile_one(self.records, self.blobs, self.executor, kind, account, name)
        except Exception:  # one broken object must not stop the others
            log.exception("reconciling %s %s/%s", kind.kind_name, account, name)
            return None
        key: WorkKey = (kind.kind_name, account, name)
        with self._lock:
            if result.outcome is not None and result.outcome.requeue_after is not None:
                self._requeues[key] = time.monotonic() + result.outcome.requeue_after
            else:
                self._requeues.pop(key, None)
        return result

    def reconcile_all(self) -> int:
        """One level-based pass over every object; returns how many changed."""
        changed = 0
        seen = set()
        for kind in KINDS:
            for entity in self.records.scan(kind):
                seen.add((kind.kind_name, entity.account, entity.name))
                result = self._reconcile(kind, entity.account, entity.name)
                if result is not None:
                    changed += result.wrote_status or result.finalized
        # Work whose record vanished (deleted without the controller): stop it.
        for key in self.executor.work_keys():
            if key not in seen:
                self.executor.stop(key)
        return changed

    def reconcile_keys(self, keys: Iterable[WorkKey]) -> int:
        """A pass over these objects, then over the evaluations waiting for any Model or
        Dataset among them that has settled (Ready or Failed); returns how many changed."""
        changed = 0
        settled: list[tuple[type[Model] | type[Dataset], str, str]] = []
        for kind_name, account, name in sorted(keys):
            kind = KIND_BY_NAME[kind_name]
            result = self._reconcile(kind, account, name)
            if result is None:
                continue
            changed += result.wrote_status or result.finalized
            phase = result.outcome.status.phase if result.outcome is not None else None
            if (kind is Model or kind is Dataset) and KINDS[kind].lifecycle.is_settled(phase):
                settled.append((kind, account, name))
        for dependency, account, name in settled:
            for reader, evaluation in waiting_for(self.records, dependency, account, name):
                result = self._reconcile(Evaluation, reader, evaluation)
                changed += result is not None and (result.wrote_status or result.finalized)
        return changed

    def run(self, stop: threading.Event) -> None:
        next_everything = 0.0
        while not stop.is_set():
            self._woken.clear()  # what happens from here on wakes the next pass
            now = time.monotonic()
            with self._lock:
                everything = self._everything or now >= next_everything
                self._everything = False
                keys, self._dirty = self._dirty, set()
                due = [key for key, when in self._requeues.items() if when <= now]
                for key in due:
                    del self._requeues[key]
            if everything:
                next_everything = now + self.interval
                self.reconcile_all()
            elif keys or due:
                self.reconcile_keys(keys.union(due))
            if everything or keys or due:
                self.passes += 1
                if stop.wait(self.min_gap):
                    return
            with self._lock:
                wake_at = min([next_everything, *self._requeues.values()])
            self._woken.wait(max(0.0, wake_at - time.monotonic()))
