"""Executor: workloads as local subprocesses (`python -m dyff.workloads.<name>`).

At most `max_parallel` run at once (the rest wait their turn, reported as
running); each runs in its own process group so stopping it takes its children
(a `bentoml serve`) too. Nothing is persisted: after a restart the reconcilers
see no work and start it again, and the workloads are safe to rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from controller.executors import WorkKey
from controller.reconcilers.common import Workload, WorkState

# Exit codes of dyff.workloads.common.run_main: 0 done, 2 bad input (reported in status).
REPORTED = (0, 2)


@dataclass
class _Work:
    workload: Workload
    generation: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None


class LocalExecutor:
    runs_containers = False

    def __init__(
        self,
        records_url: str,
        blobs_url: str,
        work_dir: Path,
        max_parallel: int = 2,
        *,
        package: str = "dyff.workloads",
    ) -> None:
        self.package = package  # where workload modules live (tests bring their own)
        self.records_url = records_url
        self.blobs_url = blobs_url
        self.work_dir = work_dir
        self.max_parallel = max_parallel
        self._work: dict[WorkKey, _Work] = {}
        self._queue: deque[WorkKey] = deque()
        self._lock = threading.Lock()

    def _pump(self) -> None:
        running = sum(
            1 for w in self._work.values() if w.proc is not None and w.proc.poll() is None
        )
        while self._queue and running < self.max_parallel:
            key = self._queue.popleft()
            work = self._work.get(key)
            if work is None or work.proc is not None:
                continue
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true"}
            with open(work.log, "ab") as log:
                work.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        f"{self.package}.{work.workload}",
                        "--config",
                        str(work.config),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            running += 1

    def state(self, key: WorkKey) -> WorkState:
        with self._lock:
            self._pump()
            work = self._work.get(key)
            if work is None:
                return WorkState()
            if work.proc is None or work.proc.poll() is None:
                return WorkState("running", work.generation)
            code = work.proc.returncode
            if code in REPORTED:
                return WorkState("succeeded", work.generation)
            return WorkState("failed", work.generation, f"exit {code}; {_tail(work.log)}")

    def start(self, key: WorkKey, workload: Workload, generation: int) -> None:
        kind, account, name = key
        folder = self.work_dir / kind.lower() / account / name
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "config.json"
        config.write_text(
            json.dumps(
                {
                    "recordsUrl": self.records_url,
                    "blobsUrl": self.blobs_url,
                    "account": account,
                    "name": name,
                    "scratchDir": str(folder / "scratch"),
                }
            )
        )
        with self._lock:
            self._kill(key)
            self._work[key] = _Work(workload, generation, config, folder / "log.txt")
            self._queue.append(key)
            self._pump()

    def _kill(self, key: WorkKey) -> None:
        work = self._work.pop(key, None)
        if work is None or work.proc is None or work.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(work.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                work.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop(self, key: WorkKey) -> None:
        with self._lock:
            self._kill(key)

    def work_keys(self) -> list[WorkKey]:
        with self._lock:
            return list(self._work)

    def close(self) -> None:
        with self._lock:
            for key in list(self._work):
                self._kill(key)
            self._queue.clear()


def _tail(path: Path, n: int = 600) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-n:].strip().replace("\n", " | ")
