"""p50/p99 latency of POST /v1/evaluations with 50 concurrent clients, against the floor.

The shim runs as its own process (`python -m api_shim`, as in its container)
on the Cloud Datastore emulator. The floor is measured in the same run against
the same emulator: a bare transactional insert of one entity with the same
Datastore client library, also 50 at a time. Prints one JSON line:
{"bench": "api_latency", "value": p99_ms, "unit": "ms", "baseline": floor_p99_ms,
 "ratio": value / baseline, ...}. Goal: ratio <= 1.5.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from dyff import accounts, emulators  # noqa: E402
from dyff.schema import Dataset, Model  # noqa: E402
from tests import factories  # noqa: E402

CONCURRENCY = 50
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "2000"))
ROUNDS = 4  # shim and floor alternate, so both see the same background load
WARMUP = 200
PROJECT = "dyff-bench"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def floor_latencies(namespace: str, ids: range, warmup: bool) -> list[float]:
    """Bare transactional inserts, 50 at a time, each timed."""
    from google.cloud import datastore

    from dyff.stores.datastore import retry_on_contention

    client = datastore.Client(project=PROJECT, namespace=namespace)

    def insert(i: int) -> float:
        # The same key shape as a record (the account is the ancestor), so the same
        # entity-group contention, retried with the same policy as the record store.
        def attempt() -> None:
            with client.transaction():
                entity = datastore.Entity(client.key("Tenant", "bench", "Floor", f"f{i}"))
                entity.update({"body": "{}", "version": 1})
                client.put(entity)

        start = time.perf_counter()
        retry_on_contention(attempt)
        return time.perf_counter() - start

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        if warmup:
            list(pool.map(insert, range(-WARMUP, 0)))
        return list(pool.map(insert, ids))


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator shares two cores with the
    shim and the emulator, so it must cost far less per request than httpx does."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, token: str, body: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)


async def shim_latencies(port: int, token: str, ids: range, warmup: bool) -> list[float]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    latencies: list[float] = []

    async def worker(record: bool) -> None:
        conn = await Connection.open(port)
        try:
            while not queue.empty():
                i = queue.get_nowait()
                body = json.dumps(
                    {"name": f"e{i}", "spec": {"model": {"name": "m"}, "dataset": {"name": "d"}}}
                ).encode()
                start = time.perf_counter()
                status, text = await conn.post("/v1/evaluations", token, body)
                elapsed = time.perf_counter() - start
                if status != 201:
                    raise RuntimeError(f"{status}: {text[:500]!r}")
                if record:
                    latencies.append(elapsed)
        finally:
            conn.writer.close()

    phases = [(False, range(10_000_000, 10_000_000 + WARMUP))] if warmup else []
    for record, batch in [*phases, (True, ids)]:
        for i in batch:
            queue.put_nowait(i)
        await asyncio.gather(*(worker(record) for _ in range(CONCURRENCY)))
    return latencies


def main() -> None:
    with emulators.datastore_emulator(PROJECT) as emu, tempfile.TemporaryDirectory() as tmp:
        os.environ.update(emu.env)
        from dyff.stores.datastore import DatastoreRecordStore

        records = DatastoreRecordStore(PROJECT, namespace="shim")
        accounts.create_account(records, "bench")
        token, _ = accounts.mint_key(records, "bench")
        records.create(factories.model("m", account="bench"))
        records.create(factories.dataset("d", account="bench"))
        assert records.find(Model, "bench", "m") and records.find(Dataset, "bench", "d")

        port = emulators.free_port()
        env = {
            **os.environ,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "DYFF_RECORDS_URL": f"datastore://{PROJECT}?namespace=shim",
            "DYFF_BLOBS_URL": f"file://{tmp}/blobs",
            "DYFF_DATA_DIR": tmp,
        }
        shim = subprocess.Popen(
            [sys.executable, "-m", "api_shim"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            shim_ms: list[float] = []
            floor_ms: list[float] = []
            per_round = REQUESTS // ROUNDS
            for r in range(ROUNDS):
                ids = range(r * per_round, (r + 1) * per_round)
                shim_ms += [x * 1000 for x in asyncio.run(shim_latencies(port, token, ids, r == 0))]
                floor_ms += [x * 1000 for x in floor_latencies("floor", ids, r == 0)]
        finally:
            shim.terminate()
            shim.wait(10)

    p99, floor_p99 = percentile(shim_ms, 0.99), percentile(floor_ms, 0.99)
    print(
        json.dumps(
            {
                "bench": "api_latency",
                "value": round(p99, 2),
                "unit": "ms",
                "baseline": round(floor_p99, 2),
                "ratio": round(p99 / floor_p99, 3),
                "p50": round(statistics.median(shim_ms), 2),
                "baseline_p50": round(statistics.median(floor_ms), 2),
                "p50_ratio": round(statistics.median(shim_ms) / statistics.median(floor_ms), 3),
                "requests": REQUESTS,
                "concurrency": CONCURRENCY,
                "goal": "ratio <= 1.5",
            }
        )
    )


if __name__ == "__main__":
    main()
