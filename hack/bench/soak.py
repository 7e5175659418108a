"""A bounded soak of one `dyff up`: 20 clients over 3 accounts, a SIGKILL mid-way.

Setup: one `dyff up` on a fixed port over a temporary data folder; 3 accounts, each with
an untrained tiny ViT (transformers folder packed as .tar.gz) and a digits Parquet dataset,
both uploaded through the API and waited for until Ready.

Load: 20 client threads for SOAK_SECONDS (default 60), each request from a random
account: order evaluations (`inference.topK` 1..5 and `run.batchSize` varied, so both new
and reused work happens), list and get entities, read metrics and predictions of Complete
evaluations, delete some evaluations. At ~40 % of the time the `dyff up` process (only it)
is SIGKILLed; its workloads must die on their own. After a bounded wait for them, it is
started again on the same port and data folder, and the clients keep their keys. Connection
errors while it is down count as "unavailable", apart from HTTP answers.

After the load: a bounded wait until no evaluation is Pending, Running or Deleting, then
every Complete evaluation's predictions are paged through (columns row_id) and each dataset
row must appear exactly once; `dyff admin fsck --json` counts orphans; and no process of the
first instance may be alive (environment DYFF_WORK_DIR under the data folder, started
before the restart).

Prints one JSON line {"bench": "soak", "value": 5xx count, "unit": "5xx responses",
"baseline": 0, "ratio": null, ...}. Exits 0 whatever the numbers are.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import benchenv  # noqa: F401 - first: sets the environment before dyff loads
import httpx
import psutil

from dyff.client import file_digest, pack_directory
from dyff.runtime.serve import free_port
from hack.bench.evaluation_throughput import tiny_vit_untrained
from tests.attack.conftest import Up, start_up, stop_up
from tests.workloads.dataset_fixtures import digits, write_parquet

SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
CLIENTS = 20
ACCOUNTS = 3
ROWS = 200
SHARD_ROWS = 50
KILL_AT = 0.4
THINK_S = 0.05  # a client's pause between requests
OUTAGE_SLEEP_S = 0.5  # a client's pause after a connection error
SURVIVOR_WAIT_S = 15.0  # how long the first instance's workloads get to die on their own
SETTLE_S = 180.0
READY_S = 300.0
BATCH_SIZES = (8, 16, 32, 64)
WORK_ENV = "DYFF_WORK_DIR"


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.unavailable = 0
        self.status: collections.Counter[str] = collections.Counter()
        self.fivexx: list[str] = []  # "METHOD path -> status: body" (first ones)
        self.by_op: collections.Counter[str] = collections.Counter()
        self.reads: list[tuple[float, float]] = []  # (monotonic start, ms)
        self.deleted: set[tuple[str, str, str]] = set()  # (account, name, uid)
        self.deletes: list[tuple[float, str, str, str]] = []  # (monotonic, account, name, uid)
        self.errors: list[dict[str, Any]] = []  # a 5xx on results, with its evaluation's record

    def answer(self, method: str, path: str, r: httpx.Response, t0: float, ms: float) -> None:
        with self.lock:
            self.requests += 1
            self.status[str(r.status_code)] += 1
            if r.status_code >= 500 and len(self.fivexx) < 20:
                self.fivexx.append(f"{method} {path} -> {r.status_code}: {r.text[:300]}")
            if method == "GET":
                self.reads.append((t0, ms))

    def down(self) -> None:
        with self.lock:
            self.unavailable += 1


class Account:
    def __init__(self, name: str, key: str, url: str) -> None:
        self.name, self.key = name, key
        self.http = httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30
        )
        self.lock = threading.Lock()
        self.evaluations: dict[str, tuple[str, str]] = {}  # name -> (last phase seen, uid)

    def note(self, items: list[dict[str, Any]]) -> None:
        with self.lock:
            for e in items:
                phase = (e.get("status") or {}).get("phase") or "Pending"
                self.evaluations[e["metadata"]["name"]] = (phase, e["metadata"].get("uid") or "")

    def pick(self, rng: random.Random, phase: str | None = None) -> tuple[str, str] | None:
        """(name, uid) of a known evaluation (in `phase`, else any not being deleted)."""
        with self.lock:
            names = sorted(
                (n, uid)
                for n, (p, uid) in self.evaluations.items()
                if p == phase or (phase is None and p != "Deleting")
            )
        return rng.choice(names) if names else None


def call(
    stats: Stats, acct: Account, method: str, path: str, op: str = "", **kw: Any
) -> httpx.Response | None:
    t0 = time.monotonic()
    try:
        r = acct.http.request(method, path, **kw)
    except httpx.TransportError:
        stats.down()
        time.sleep(OUTAGE_SLEEP_S)
        return None
    stats.answer(method, path, r, t0, (time.monotonic() - t0) * 1000)
    with stats.lock:
        stats.by_op[f"{op or method} {r.status_code}"] += 1
    return r


def order_body(top_k: int, batch: int) -> dict[str, Any]:
    return {
        "spec": {
            "model": {"name": "m"},
            "dataset": {"name": "d"},
            "inference": {"topK": top_k},
            "run": {"batchSize": batch},
        }
    }


def note_error(
    stats: Stats, acct: Account, op: str, name: str, uid: str, r: httpx.Response
) -> None:
    """What the record says right after a 5xx on an evaluation's results."""
    entry: dict[str, Any] = {"t": time.monotonic(), "account": acct.name, "op": op,
                             "name": name, "uid_seen": uid,
                             "request_id": r.headers.get("x-request-id")}  # fmt: skip
    with contextlib.suppress(httpx.HTTPError, ValueError):
        g = acct.http.get(f"/v1/evaluations/{name}")
        if g.status_code == 200:
            body = g.json()
            entry.update(
                phase=(body.get("status") or {}).get("phase"),
                uid_now=body["metadata"].get("uid"),
                deletion=body["metadata"].get("deletionTimestamp"),
            )
        else:
            entry["get"] = g.status_code
    with stats.lock:
        stats.errors.append(entry)


def client(stats: Stats, accounts: list[Account], deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    ops = ["order"] * 8 + ["list"] * 25 + ["get"] * 20 + ["metrics"] * 15
    ops += ["predictions"] * 15 + ["delete"] * 1 + ["models"] * 13
    for _ in range(100_000):  # bounded in count as well as time
        if time.monotonic() >= deadline:
            return
        acct = rng.choice(accounts)
        op = rng.choice(ops)
        if op == "order":
            r = call(stats, acct, "POST", "/v1/evaluations", "order",
                     json=order_body(rng.randint(1, 5), rng.choice(BATCH_SIZES)))  # fmt: skip
            if r is not None and r.status_code in (200, 201):
                acct.note([r.json()])
        elif op == "list":
            params: dict[str, Any] = {"limit": 500}
            if rng.random() < 0.3:
                params["phase"] = rng.choice(["Complete", "Running", "Pending"])
            r = call(stats, acct, "GET", "/v1/evaluations", "list", params=params)
            if r is not None and r.status_code == 200:
                acct.note(r.json()["items"])
        elif op == "models":
            kind = rng.choice(["models", "datasets"])
            if rng.random() < 0.5:
                call(stats, acct, "GET", f"/v1/{kind}", "list_" + kind)
            else:
                call(stats, acct, "GET", f"/v1/{kind}/{'m' if kind == 'models' else 'd'}",
                     "get_" + kind)  # fmt: skip
        elif op == "get":
            picked = acct.pick(rng)
            if picked:
                name = picked[0]
                r = call(stats, acct, "GET", f"/v1/evaluations/{name}", "get")
                if r is not None and r.status_code == 200:
                    acct.note([r.json()])
        elif op in ("metrics", "predictions"):
            picked = acct.pick(rng, "Complete")
            if picked:
                name = picked[0]
                if op == "metrics":
                    r = call(stats, acct, "GET", f"/v1/evaluations/{name}/metrics", "metrics")
                else:
                    params = {"limit": rng.choice([10, 100, 1000]),
                              "offset": rng.randint(0, ROWS),
                              "order": rng.choice(["row_id", "score_desc"])}  # fmt: skip
                    r = call(stats, acct, "GET", f"/v1/evaluations/{name}/predictions",
                             "predictions", params=params)  # fmt: skip
                if r is not None and r.status_code >= 500:
                    note_error(stats, acct, op, name, picked[1], r)
        elif op == "delete":
            # Mostly finished ones, so that some evaluations live to be checked.
            picked = acct.pick(rng, "Complete" if rng.random() < 0.7 else None)
            if picked:
                name, uid = picked
                r = call(stats, acct, "DELETE", f"/v1/evaluations/{name}", "delete")
                if r is not None and r.status_code == 202:
                    with stats.lock:
                        stats.deleted.add((acct.name, name, uid))
                        stats.deletes.append((time.monotonic(), acct.name, name, uid))
                    with acct.lock:
                        acct.evaluations.pop(name, None)
        time.sleep(THINK_S)


def processes_under(data_dir: Path, started_before: float | None = None) -> list[str]:
    """Processes whose environment names a work folder under data_dir."""
    out = []
    root = str(data_dir.resolve())
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "create_time", "cmdline"]):
        try:
            if proc.pid == me:
                continue
            work = proc.environ().get(WORK_ENV)
            if not work or not (work == root or work.startswith(root + os.sep)):
                continue
            if started_before is not None and proc.info["create_time"] >= started_before:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])[:160]
            out.append(f"{proc.pid}: {cmd} ({WORK_ENV}={work})")
        except (psutil.Error, OSError):
            continue
    return out


def list_all(acct: Account, kind: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = None
    for _ in range(100):
        params: dict[str, Any] = {"limit": 500}
        if token:
            params["pageToken"] = token
        r = acct.http.get(f"/v1/{kind}", params=params)
        r.raise_for_status()
        body = r.json()
        items += body["items"]
        token = body.get("nextPageToken")
        if not token:
            break
    return items


def wait_phase(acct: Account, kind: str, name: str, want: str, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        body = acct.http.get(f"/v1/{kind}/{name}").json()
        phase = (body.get("status") or {}).get("phase")
        if phase == want:
            return body
        if phase == "Failed" or time.monotonic() > deadline:
            raise RuntimeError(f"{acct.name} {kind}/{name} is {phase}: {json.dumps(body)[:800]}")
        time.sleep(1)


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(0.99 * len(s)))], 1)


def register(acct: Account, kind: str, body: dict[str, Any], data: bytes) -> None:
    r = acct.http.post(f"/v1/{kind}", json=body)
    assert r.status_code == 201, r.text
    upload = r.json()["upload"]
    put = httpx.put(
        upload["url"], content=data, headers={"X-Dyff-Upload-Token": upload["token"]}, timeout=60
    )
    assert put.status_code == 204, put.text


def main() -> int:
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="dyff-bench-soak-"))
    port = free_port()
    up: Up | None = None
    accounts: list[Account] = []
    try:
        model_dir = tiny_vit_untrained(tmp / "model")
        archive = pack_directory(model_dir, tmp / "model.tar.gz")
        model_bytes = archive.read_bytes()
        parquet = write_parquet(tmp / "digits.parquet", digits(ROWS)).read_bytes()
        up = start_up(tmp, port)
        data_dir = up.data_dir
        log(f"dyff up on {up.url}, data {data_dir}")
        with up.client(up.admin_key) as admin:
            for i in range(ACCOUNTS):
                r = admin.post("/v1/accounts", json={"name": f"soak{i + 1}"})
                assert r.status_code == 201, r.text
                accounts.append(Account(f"soak{i + 1}", r.json()["token"], up.url))
        sha, size = file_digest(archive)
        assert sha == hashlib.sha256(model_bytes).hexdigest()
        for a in accounts:
            register(a, "models", {"name": "m", "spec": {"source": {"form": "transformers",
                     "upload": {"sha256": sha, "sizeBytes": size}}}}, model_bytes)  # fmt: skip
            register(a, "datasets", {"name": "d", "spec": {"shardRows": SHARD_ROWS,
                     "source": {"form": "parquet", "upload": {
                         "sha256": hashlib.sha256(parquet).hexdigest(),
                         "sizeBytes": len(parquet)}}}}, parquet)  # fmt: skip
        rows = {}
        for a in accounts:
            wait_phase(a, "models", "m", "Ready", READY_S)
            ds = wait_phase(a, "datasets", "d", "Ready", READY_S)
            rows[a.name] = int(ds["status"]["rows"])
        log(f"setup done in {time.monotonic() - t_start:.0f}s; load for {SECONDS:.0f}s")

        stats = Stats()
        t0 = time.monotonic()
        deadline = t0 + SECONDS
        threads = [
            threading.Thread(target=client, args=(stats, accounts, deadline, i), daemon=True)
            for i in range(CLIENTS)
        ]
        for t in threads:
            t.start()
        time.sleep(max(0.0, t0 + KILL_AT * SECONDS - time.monotonic()))
        # Kill while a workload runs, if one starts within a bounded grace.
        at_kill = processes_under(data_dir)
        for _ in range(200):
            if at_kill or time.monotonic() > t0 + (KILL_AT + 0.15) * SECONDS:
                break
            time.sleep(0.2)
            at_kill = processes_under(data_dir)
        phases_at_kill: collections.Counter[str] = collections.Counter()
        for a in accounts:
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                for e in list_all(a, "evaluations"):
                    phases_at_kill[(e.get("status") or {}).get("phase") or "Pending"] += 1
        first_pid = up.proc.pid
        kill_t = time.monotonic()
        os.kill(first_pid, signal.SIGKILL)
        up.proc.wait(10)
        log(
            f"SIGKILLed dyff up (pid {first_pid}); just before: {len(at_kill)} workload "
            f"processes, evaluations {dict(phases_at_kill)}"
        )
        # Its workloads must die on their own: look before the restart (which ends leftovers).
        left: list[str] = []
        for _ in range(int(SURVIVOR_WAIT_S / 0.5)):
            left = processes_under(data_dir)
            if not left:
                break
            time.sleep(0.5)
        survivors_after_kill = left
        wait_s = time.monotonic() - kill_t
        log(f"{len(left)} processes of the first instance alive {wait_s:.1f}s after the kill")
        first_log = up.log.with_name(f"up-{port}-first.log")
        up.log.rename(first_log)  # start_up writes the same log name again
        restart_wall = time.time()
        up = start_up(tmp, port)  # same data and port; writes config/admin key again
        answer_t = time.monotonic()
        log(f"restarted in {answer_t - kill_t:.1f}s after the kill")
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic() + 60))
        load_s = time.monotonic() - t0

        # Settle: nothing Pending, Running or Deleting (bounded).
        settle_deadline = time.monotonic() + SETTLE_S
        evals: dict[str, list[dict[str, Any]]] = {}
        while True:
            evals = {a.name: list_all(a, "evaluations") for a in accounts}
            busy = [
                (n, e["metadata"]["name"], (e.get("status") or {}).get("phase"))
                for n, es in evals.items()
                for e in es
                if (e.get("status") or {}).get("phase") in (None, "Pending", "Running", "Deleting")
            ]
            if not busy or time.monotonic() > settle_deadline:
                break
            time.sleep(2)
        log(f"settled: {len(busy)} still busy {busy[:10]}")

        lost = duplicated = 0
        unreadable: list[str] = []
        problems: list[str] = []
        counts: collections.Counter[str] = collections.Counter()
        for a in accounts:
            for e in evals[a.name]:
                phase = (e.get("status") or {}).get("phase") or "Pending"
                counts[phase] += 1
                if phase != "Complete":
                    continue
                name = e["metadata"]["name"]
                ids: list[int] = []
                for page in range(100):
                    r = a.http.get(f"/v1/evaluations/{name}/predictions", params={
                        "columns": "row_id", "order": "row_id", "limit": 10_000,
                        "offset": page * 10_000})  # fmt: skip
                    if r.status_code != 200:
                        unreadable.append(f"{a.name}/{name}")
                        problems.append(
                            f"{a.name}/{name} predictions: {r.status_code} {r.text[:200]}"
                        )
                        break
                    got = [int(x["row_id"]) for x in r.json()["rows"]]
                    ids += got
                    if len(got) < 10_000:
                        break
                c = collections.Counter(ids)
                want = set(range(rows[a.name]))
                lost_here = len(want - set(c))
                dup_here = sum(v - 1 for v in c.values() if v > 1) + len(set(c) - want)
                if lost_here or dup_here:
                    problems.append(f"{a.name}/{name}: {lost_here} lost, {dup_here} duplicated")
                lost += lost_here
                duplicated += dup_here

        env = {
            **os.environ,
            "DYFF_DATA_DIR": str(data_dir),
            "DYFF_CONFIG": str(tmp / "config.json"),
        }
        fsck = subprocess.run(
            [sys.executable, "-m", "dyff.cli", "--json", "admin", "fsck"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        try:
            orphan_list = json.loads(fsck.stdout)
        except json.JSONDecodeError:
            orphan_list = None
            problems.append(f"fsck rc {fsck.returncode}: {fsck.stdout[:300]} {fsck.stderr[-500:]}")
        survivors = processes_under(data_dir, started_before=restart_wall)
        tracebacks = {
            "first": first_log.read_text(errors="replace").count("Traceback"),
            "second": up.log.read_text(errors="replace").count("Traceback"),
        }

        reads_before = [ms for t, ms in stats.reads if t < kill_t]
        reads_during = [ms for t, ms in stats.reads if kill_t <= t < answer_t + 10]
        line = {
            "bench": "soak",
            "value": sum(v for k, v in stats.status.items() if k.startswith("5")),
            "unit": "5xx responses",
            "baseline": 0,
            "ratio": None,
            "requests": stats.requests,
            "unavailable": stats.unavailable,
            "status_counts": dict(sorted(stats.status.items())),
            "lost_rows": lost,
            "duplicated_rows": duplicated,
            "orphans": len(orphan_list) if orphan_list is not None else None,
            "unreadable_complete_evaluations": len(unreadable),
            "survivors": len(survivors),
            "survivors_15s_after_kill": len(survivors_after_kill),
            "workload_processes_at_kill": len(at_kill),
            "evaluations_at_kill": dict(sorted(phases_at_kill.items())),
            "evaluations": {
                "complete": counts["Complete"],
                "failed": counts["Failed"],
                "deleted": len(stats.deleted),
                "other": sum(v for k, v in counts.items() if k not in ("Complete", "Failed")),
            },
            "status_by_op": dict(sorted(stats.by_op.items())),
            "log_tracebacks": tracebacks,
            "p99_read_ms_before": p99(reads_before),
            "p99_read_ms_during": p99(reads_during),
            "outage_s": round(answer_t - kill_t, 1),
            "load_s": round(load_s, 1),
            "seconds": round(time.monotonic() - t_start, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        for s in stats.fivexx:
            log(f"5xx: {s}")
        for e in stats.errors[:20]:
            near = [
                f"{d_acct}/{d_name} ({d_uid[:8]}) {d_t - e['t']:+.1f}s"
                for d_t, d_acct, d_name, d_uid in stats.deletes
                if d_acct == e["account"] and -30 < d_t - e["t"] < 5
            ]
            e = {**e, "t": round(e["t"] - t0, 1), "deletes_in_account_30s_before": near[-8:]}
            log(f"5xx detail: {json.dumps(e)}")
        for p in problems[:20]:
            log(f"problem: {p}")
        for o in (orphan_list or [])[:20]:
            log(f"orphan: {o}")
        for s in survivors_after_kill[:20]:
            log(f"alive after kill: {s}")
        for s in survivors[:20]:
            log(f"survivor: {s}")
        print(json.dumps(line), flush=True)
    finally:
        for a in accounts:
            a.http.close()
        if up is not None:
            stop_up(up)
        if os.environ.get("SOAK_KEEP"):
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
