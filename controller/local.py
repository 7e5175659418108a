"""The local driver: the same reconcilers on one machine, against the record store
directly (no custom resources), with workloads as local processes. It passes over every
kind of the registry (`controller.reconcile.KINDS`) in turn.

It runs a pass when something happened — `wake()`: a record written in this process (the
shim's), a workload exited (its report is in) — and otherwise every `interval` seconds, a
safety net for what no event announces (an upload landing by another process, the
time-based requeues of waiting work)."""

from __future__ import annotations

import logging
import threading

from controller.executors import Executor
from controller.reconcile import KINDS, reconcile_one
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

log = logging.getLogger("dyff.controller.local")


class LocalDriver:
    def __init__(
        self,
        records: RecordStore,
        blobs: BlobStore,
        executor: Executor,
        interval: float = 1.0,
        min_gap: float = 0.1,
    ) -> None:
        self.records = records
        self.blobs = blobs
        self.executor = executor
        self.interval = interval
        # However busy the shim is, at most one pass (a scan of every record) per min_gap:
        # writes arriving meanwhile are taken by the next pass together.
        self.min_gap = min_gap
        self._woken = threading.Event()
        self.passes = 0

    def wake(self, *_: object) -> None:
        """Run a pass now (any arguments are ignored: it fits every notifier)."""
        self._woken.set()

    def reconcile_all(self) -> int:
        """One level-based pass over every object; returns how many changed."""
        changed = 0
        seen = set()
        for kind in KINDS:
            for entity in self.records.scan(kind):
                seen.add((kind.kind_name, entity.account, entity.name))
                try:
                    result = reconcile_one(
                        self.records, self.blobs, self.executor, kind, entity.account, entity.name
                    )
                except Exception:  # one broken object must not stop the others
                    log.exception(
                        "reconciling %s %s/%s", kind.kind_name, entity.account, entity.name
                    )
                    continue
                changed += result.wrote_status or result.finalized
        # Work whose record vanished (deleted without the controller): stop it.
        for key in self.executor.work_keys():
            if key not in seen:
                self.executor.stop(key)
        return changed

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._woken.clear()  # what happens from here on wakes the next pass
            self.reconcile_all()
            self.passes += 1
            if stop.wait(self.min_gap):
                return
            self._woken.wait(max(0.0, self.interval - self.min_gap))
