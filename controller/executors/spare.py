"""A spare workload process: `python -m controller.executors.spare MODULE`.

It imports MODULE (a workload, e.g. dyff.workloads.evaluate: numpy, pyarrow, polars and
dyff's modules take 0.6-0.9 s to import here) and waits for its assignment, one JSON line on
stdin: {"config": PATH, "log": PATH, "workDir": PATH}. Then it sends its output to the log,
marks its environment with the work folder (what its children inherit, as a workload
started for that work would), and runs the workload's `main(["--config", PATH])`, exiting
with its code. EOF without an assignment: it exits.

The LocalExecutor keeps one started (from its spawner thread: the parent-death signal
applies, and its own process group), so an evaluation starts without paying the imports.
Its first environment marks it with a folder under the work folder, so the guard and
`recover()` find it as they find workloads.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import sys
import threading
import time

# When the spare was handed its work: the workload's start, for `status.timings`.
STARTED_ENV = "DYFF_WORKLOAD_STARTED"
PRELOAD_AFTER_IDLE_S = 2.5


def main(module: str) -> int:  # pragma: no cover - runs in its own process
    from controller.executors.guard import WORK_DIR_ENV

    workload = importlib.import_module(module)
    preload = getattr(workload, "preload", None)
    if preload is not None:
        # What the workload may need (an evaluation running the model itself: torch,
        # transformers: seconds of CPU), imported once the spare has waited a moment, so
        # work ordered right after the last (on a busy machine) does not share the CPU
        # with it; in a thread, so work that needs none of it goes ahead at once.
        idle, _, _ = select.select([sys.stdin], [], [], PRELOAD_AFTER_IDLE_S)
        if not idle:
            threading.Thread(target=preload, name="dyff-preload", daemon=True).start()
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    task = json.loads(line)
    os.environ[STARTED_ENV] = repr(time.time())
    os.environ[WORK_DIR_ENV] = task["workDir"]
    fd = os.open(task["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    return int(workload.main(["--config", task["config"]]) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1]))
