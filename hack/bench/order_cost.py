"""What an order costs `dyff up`'s controller as evaluations pile up (issue 16: people who
gate every commit keep thousands).

`controller.local.LocalDriver` on SQLite, with workloads that report at once (the tests'
`FakeWorkloads`: the driver's own cost, no model), runs on its thread as under `dyff up`,
woken by the record writes. With BENCH_KEPT (default 1000) Complete evaluations kept, an
evaluation is ordered BENCH_ORDERS times (default 7) and timed from `create` to its record
saying Complete (polled every 2 ms); the same with none kept is the baseline, in the same
run. One JSON line: {"bench": "order_cost", "value": median ms with BENCH_KEPT kept,
"baseline": median ms with none, "ratio": ..., "runs_ms": ..., "load_avg_1m": ...}.
A driver that passes over every record per event makes the ratio grow with BENCH_KEPT.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import benchenv  # noqa: F401 - first: sets the environment before dyff loads

KEPT = int(os.environ.get("BENCH_KEPT", "1000"))
ORDERS = int(os.environ.get("BENCH_ORDERS", "7"))


def order_times(kept: int) -> list[float]:
    from controller.local import LocalDriver
    from dyff import layout
    from dyff.schema import Dataset, Evaluation, Model
    from dyff.stores.file import FileBlobStore
    from dyff.stores.sqlite import SqliteRecordStore
    from tests import factories
    from tests.controller.conftest import FakeWorkloads

    with tempfile.TemporaryDirectory(prefix="bench-order-") as tmp_name:
        tmp = Path(tmp_name)
        records, blobs = SqliteRecordStore(tmp / "records.db"), FileBlobStore(tmp / "blobs")
        for kind, entity in ((Model, factories.model()), (Dataset, factories.dataset())):
            records.create(entity)
            upload = entity.spec.source.upload
            assert upload is not None
            key = layout.upload_key("acme", kind.kind_name, entity.name, upload.sha256)
            blobs.put(key, b"x" * upload.size_bytes)
        for i in range(kept):
            records.create(factories.evaluation(f"kept{i}"))
        driver = LocalDriver(records, blobs, FakeWorkloads(records, blobs))
        for _ in range(3):  # ingest the model and dataset, then evaluate the kept ones
            driver.reconcile_all()
        records.on_write(driver.wake)
        stop = threading.Event()
        thread = threading.Thread(target=driver.run, args=(stop,), daemon=True)
        thread.start()
        time.sleep(3)  # the first pass over everything, and the kept ones' requeues
        times = []
        try:
            for i in range(ORDERS):
                started = time.perf_counter()
                records.create(factories.evaluation(f"order{i}"))
                while records.get(Evaluation, "acme", f"order{i}").status.phase != "Complete":
                    time.sleep(0.002)
                times.append(1000 * (time.perf_counter() - started))
                time.sleep(0.3)
        finally:
            stop.set()
            driver.wake()
            thread.join(10)
            records.close()
        return times


def main() -> None:
    base, value = order_times(0), order_times(KEPT)
    print(
        json.dumps(
            {
                "bench": "order_cost",
                "value": round(statistics.median(value), 1),
                "unit": "ms",
                "baseline": round(statistics.median(base), 1),
                "baseline_is": "the same order with no evaluation kept",
                "ratio": round(statistics.median(value) / statistics.median(base), 3),
                "kept": KEPT,
                "runs_ms": [round(t, 1) for t in value],
                "baseline_runs_ms": [round(t, 1) for t in base],
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
