"""The guard of a `LocalExecutor`: `python -m controller.executors.guard WORK_DIR`, a small
process in a session of its own whose stdin is a pipe only the executor's process holds
open. When that pipe closes — the executor closed, or its process died, SIGKILL included —
it kills every process started for work under WORK_DIR (found by identity and by the
`DYFF_WORK_DIR` mark every workload's tree inherits), with their descendants, whatever
session they run in. This module imports only psutil: it starts quickly."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import psutil

# In the environment of every workload and of every process it starts: its work folder.
WORK_DIR_ENV = "DYFF_WORK_DIR"
# In a running workload's work folder: its pid and start time.
WORKER_FILE = "worker.json"
GUARD_MODULE = "controller.executors.guard"  # `python -m GUARD_MODULE WORK_DIR`


def leftovers(under: Path) -> list[psutil.Process]:
    """Processes started for work under `under`: the workers named in `worker.json`
    files (pid and start time must both match: a recycled pid is never hit) and any
    process whose environment carries a work folder under `under`."""
    root = str(under.resolve())
    found: dict[int, psutil.Process] = {}
    for file in under.rglob(WORKER_FILE):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, psutil.Error):
            info = json.loads(file.read_text())
            proc = psutil.Process(int(info["pid"]))
            if abs(proc.create_time() - float(info["createTime"])) < 0.01:
                found[proc.pid] = proc
    me = os.getpid()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid == me:
                continue
            marked = proc.environ().get(WORK_DIR_ENV)
            if marked and (marked == root or marked.startswith(root + os.sep)):
                found[proc.pid] = proc
    return list(found.values())


def guards_of(under: Path) -> list[psutil.Process]:
    """The guards (this module's `main`) watching `under`, other than this process."""
    watched = {str(under), str(under.resolve())}
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if proc.pid != me and GUARD_MODULE in cmd and cmd[-1:] and cmd[-1] in watched:
            found.append(proc)
    return found


def kill_leftovers(under: Path, rounds: int = 3) -> int:
    """Kill, with their descendants, the processes started for work under `under`;
    returns how many were killed."""
    killed = 0
    for _ in range(rounds):  # a process may have started one while we looked
        if not under.exists():
            break
        found = leftovers(under)
        if not found:
            break
        family = {p.pid: p for p in found}
        for proc in found:
            with contextlib.suppress(psutil.Error):
                proc.suspend()  # no new children while we collect
        for proc in found:
            with contextlib.suppress(psutil.Error):
                family.update({c.pid: c for c in proc.children(recursive=True)})
        for proc in family.values():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(list(family.values()), timeout=10)
        killed += len(family)
    return killed


def main(work_dir: str) -> None:  # pragma: no cover - runs in its own process
    sys.stdin.buffer.read()  # until the executor's end closes, however it closes
    kill_leftovers(Path(work_dir))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1])
