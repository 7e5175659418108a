"""Executor: workloads as local subprocesses (`python -m dyff.workloads.<name>`).

At most `max_parallel` run at once (the rest wait their turn, reported as
running); each runs in its own process group so stopping it takes its children
(a `bentoml serve`) too. After a restart the reconcilers see no work and start
it again, and the workloads are safe to rerun.

Workloads never outlive the process that started them:
- on Linux each is started with `PR_SET_PDEATHSIG = SIGKILL`, so the kernel kills
  it when its parent dies, SIGKILL included. The death signal follows the *thread* that
  forked, so every workload is started from one thread that lives as long as the
  executor;
- every process of a workload's tree carries `DYFF_WORK_DIR` (its work folder) in its
  environment, and a running workload's pid and start time are in `worker.json` in its
  work folder. A guard process (controller.executors.guard), watching a pipe only this
  process holds, kills all of them once the pipe closes, however this process ends: the
  children a workload starts in sessions of their own (the evaluate workload's reaper
  does the same for its `bentoml serve`), and on platforms without a parent-death signal
  the workloads themselves;
- `recover()`, on start, kills whatever an earlier instance left (by identity: a recycled
  pid is never hit) before any work starts again, so one work key never has two workers.

Two things are kept ready between workloads (both marked with folders under the work
folder, so the guard and `recover()` end them like workloads, and `close()` stops them):
- warm model servers (controller.executors.warm): the evaluate workload leases its model's
  server from the pool through `DYFF_WARM_POOL`; the server outlives the evaluation for
  DYFF_WARM_IDLE_S (300 s; 0: off), at most DYFF_WARM_MAX (2) idle, least recently used
  stopped first; `stop` of a Model stops its servers;
- a spare evaluate process, its imports done (controller.executors.spare), handed the next
  evaluation's config: the process started for the work, started from the spawner thread
  as every workload is (DYFF_SPARE_WORKLOADS=0 turns it off).

Work folders, `WORK/<kind>/<account>/<name>/`: `config.json`, `log.txt`, `scratch/`
(downloads, the Bento, the server's files) and `worker.json` while it runs. When the
work ends its scratch folder and `worker.json` go; the config and the log stay while
the entity exists (a failure's message quotes the log, and the log is what a user
reads to learn why). `stop` — the entity is deleted, or its work abandoned for a new
spec — removes the whole folder. `sweep()`, on start, removes the folders of entities
that no longer exist and the scratch of interrupted work.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

from controller.executors import WorkKey
from controller.executors.guard import (
    GUARD_MODULE,
    WORK_DIR_ENV,
    WORKER_FILE,
    guards_of,
    kill_leftovers,
)
from controller.executors.warm import WarmPool
from controller.reconcilers.common import Workload, WorkState

log = logging.getLogger("dyff.controller.local")

# Exit codes of dyff.workloads.common.run_main: 0 done, 2 bad input (reported in status).
REPORTED = (0, 2)
STOP_GRACE_S = 10.0
EXIT_POLL_S = 0.05
PR_SET_PDEATHSIG = 1
# Workloads (of dyff.workloads) kept ready as a spare process, imports done
# (controller.executors.spare): an evaluation then starts in milliseconds, not 0.6-0.9 s.
SPARE_WORKLOADS: tuple[Workload, ...] = ("evaluate",)
SPARE_ENV = "DYFF_SPARE_WORKLOADS"  # "0": start every workload as a fresh process


@dataclass
class _Work:
    workload: Workload
    generation: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    cleaned: bool = False
    logged: bool = False  # its crash went to the controller's log

    @property
    def folder(self) -> Path:
        return self.config.parent


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child die (SIGKILL) when its parent dies: Linux's
    `prctl(PR_SET_PDEATHSIG)`. None where that is not available."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class LocalExecutor:
    @functools.cached_property
    def runs_containers(self) -> bool:
        """Image models run here where docker or podman works (the evaluate workload starts
        the container); looked at once, on first need."""
        from dyff.models import local_image_support

        support = local_image_support()
        return support.available and support.runtime in ("docker", "podman")

    def __init__(
        self,
        records_url: str,
        blobs_url: str,
        work_dir: Path,
        max_parallel: int = 2,
        *,
        package: str = "dyff.workloads",
        on_exit: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.package = package  # where workload modules live (tests bring their own)
        # Called with the work's key (kind, account, name) when a workload exits (its
        # report is written): the driver passes over that object at once.
        self.on_exit = on_exit
        self._watching: threading.Thread | None = None
        self._closing = threading.Event()
        self.records_url = records_url
        self.blobs_url = blobs_url
        self.work_dir = work_dir
        self.max_parallel = max_parallel
        self._work: dict[WorkKey, _Work] = {}
        self._queue: deque[WorkKey] = deque()
        self._lock = threading.Lock()
        self._preexec = die_with_parent()
        # One long-lived thread starts every workload (see the module's docstring).
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="dyff-spawn")
        self._guard: subprocess.Popen[bytes] | None = None
        self._spares: dict[Workload, subprocess.Popen[bytes]] = {}  # spawner thread only
        # Model servers kept warm between evaluations (controller.executors.warm); their
        # folders are under the work folder, so the guard and `recover` find them too.
        self.warm = WarmPool(work_dir / "warm")

    def _start_guard(self) -> None:
        """The guard (controller.executors.guard): it outlives this process to kill what
        the parent-death signal cannot reach (a workload's children in sessions of their
        own) and, where there is no such signal, the workloads themselves."""
        if self._guard is not None:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        read_end, write_end = os.pipe()
        try:
            self._guard = subprocess.Popen(
                [sys.executable, "-m", GUARD_MODULE, str(self.work_dir)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C of the terminal does not reach it
            )
        finally:
            os.close(read_end)
        self._guard_pipe = write_end  # never inherited: os.pipe fds are not inheritable

    def _folder(self, key: WorkKey) -> Path:
        kind, account, name = key
        return self.work_dir / kind.lower() / account / name

    def _env(self, folder: Path) -> dict[str, str]:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "BENTOML_DO_NOT_TRACK": "true",
            WORK_DIR_ENV: str(folder.resolve()),
        }
        if self.warm.socket_path is not None:
            from dyff.runtime.serve import WARM_POOL_ENV

            env[WARM_POOL_ENV] = str(self.warm.socket_path)
        # A cold evaluation of dyff's own model runs it in the workload (dyff.runtime.in_process).
        env.setdefault("DYFF_IN_PROCESS", "1")
        return env

    def _spare_kept(self, workload: Workload) -> bool:
        return (
            self.package == "dyff.workloads"
            and workload in SPARE_WORKLOADS
            and os.environ.get(SPARE_ENV, "1") != "0"
        )

    def _ensure_spares(self) -> None:
        """Start the spare processes that are missing (spawner thread only)."""
        for workload in SPARE_WORKLOADS:
            spare = self._spares.get(workload)
            if self._closing.is_set() or not self._spare_kept(workload):
                continue
            if spare is None or spare.poll() is not None:
                self._spares[workload] = subprocess.Popen(
                    [sys.executable, "-m", "controller.executors.spare",
                     f"{self.package}.{workload}"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=self._env(self.work_dir / "spare"),
                    start_new_session=True,
                    preexec_fn=self._preexec,
                )  # fmt: skip

    def _assign_spare(self, work: _Work) -> subprocess.Popen[bytes] | None:
        """Hand `work` to the spare process of its workload, if one is ready."""
        spare = self._spares.pop(work.workload, None)
        if spare is None or spare.stdin is None:
            return None
        task = {"config": str(work.config), "log": str(work.log),
                "workDir": str(work.folder.resolve())}  # fmt: skip
        try:
            if spare.poll() is not None:
                raise OSError("the spare exited")
            spare.stdin.write(json.dumps(task).encode() + b"\n")
            spare.stdin.close()
        except OSError:
            self._signal([spare])
            return None
        return spare

    def _spawn(self, work: _Work) -> subprocess.Popen[bytes]:
        proc = self._assign_spare(work)
        if proc is None:
            with open(work.log, "ab") as log:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        f"{self.package}.{work.workload}",
                        "--config",
                        str(work.config),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._env(work.folder),
                    start_new_session=True,
                    preexec_fn=self._preexec,  # started from one thread only (see above)
                )
        with contextlib.suppress(psutil.Error, OSError):
            started = psutil.Process(proc.pid).create_time()
            (work.folder / WORKER_FILE).write_text(
                json.dumps({"pid": proc.pid, "createTime": started, "parent": os.getpid()})
            )
        return proc

    def _pump(self) -> None:
        running = 0
        for work in self._work.values():
            if work.proc is None:
                continue
            if work.proc.poll() is None:
                running += 1
            elif not work.cleaned:
                _end(work.folder)  # the work ended: its scratch goes, its log stays
                work.cleaned = True
                # The next spare imports now, not while this work ran: on a small
                # machine its imports would slow that work's model server start.
                self._spawner.submit(self._ensure_spares)
        while self._queue and running < self.max_parallel:
            key = self._queue.popleft()
            waiting = self._work.get(key)
            if waiting is None or waiting.proc is not None:
                continue
            self._start_guard()
            self.warm.start()  # after the guard: it must be there to end warm servers
            self._spawner.submit(self._ensure_spares)
            waiting.proc = self._spawner.submit(self._spawn, waiting).result()
            running += 1
            self._watch()

    def _watch(self) -> None:
        """While workloads run, a thread notices each exit within EXIT_POLL_S and calls
        `on_exit` with its key."""
        if self.on_exit is None or (self._watching is not None and self._watching.is_alive()):
            return
        self._watching = threading.Thread(target=self._watch_exits, name="dyff-exits", daemon=True)
        self._watching.start()

    def _watch_exits(self) -> None:
        seen: set[int] = set()
        while not self._closing.wait(EXIT_POLL_S):
            with self._lock:
                running = [(k, w.proc) for k, w in self._work.items() if w.proc is not None]
            procs = [p for _, p in running]
            exited = [(k, p) for k, p in running if p.pid not in seen and p.poll() is not None]
            for key, proc in exited:
                seen.add(proc.pid)
                if self.on_exit is not None:
                    self.on_exit(*key)
            if all(p.poll() is not None for p in procs):
                with self._lock:  # nothing runs: stop, unless work started meanwhile
                    if all(
                        w.proc is None or w.proc.poll() is not None for w in self._work.values()
                    ):
                        self._watching = None
                        return

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
            if not work.logged:
                # The workload's own words (a traceback, server paths) are for operators:
                # the log gets them, the user's status a plain sentence.
                log.warning("workload %s %s/%s exited %s: %s", *key, code, _tail(work.log))
                work.logged = True
            return WorkState(
                "failed", work.generation, f"exited with code {code}; see the server's log"
            )

    def start(self, key: WorkKey, workload: Workload, generation: int) -> None:
        _, account, name = key
        folder = self._folder(key)
        with self._lock:
            self._kill([key])
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(folder / "scratch", ignore_errors=True)  # a fresh start
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
            self._work[key] = _Work(workload, generation, config, folder / "log.txt")
            self._queue.append(key)
            self._pump()

    def _kill(self, keys: Iterable[WorkKey]) -> None:
        """Stop the work of `keys` (their process groups): SIGTERM, then SIGKILL after a
        grace period shared by all."""
        procs, folders = [], []
        for key in keys:
            work = self._work.pop(key, None)
            if work is not None:
                folders.append(work.folder)
                if work.proc is not None and work.proc.poll() is None:
                    procs.append(work.proc)
        self._signal(procs)
        for folder in folders:  # interrupted work: its scratch goes, its log stays
            _end(folder)

    @staticmethod
    def _signal(procs: list[subprocess.Popen[bytes]]) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            deadline = time.monotonic() + STOP_GRACE_S
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(max(0.0, deadline - time.monotonic()))
            procs = [p for p in procs if p.poll() is None]
            if not procs:
                return

    def stop(self, key: WorkKey) -> None:
        """Stop the key's work and remove its work folder (the entity is deleted, or its
        work is abandoned)."""
        with self._lock:
            self._kill([key])
            folder = self._folder(key)
            kill_leftovers(folder)  # its children in sessions of their own
            shutil.rmtree(folder, ignore_errors=True)
        kind, account, name = key
        if kind == "Model":  # a deleted model's warm servers go with it
            self.warm.stop_model(account, name)

    def work_keys(self) -> list[WorkKey]:
        with self._lock:
            return list(self._work)

    def recover(self) -> int:
        """Kill every workload (and its tree) a previous instance left running under the
        work folder; returns how many processes were killed. Call before starting work,
        holding the data folder's lock (no other instance is alive). A previous instance's
        guard, still sweeping after its death, goes first: it would take this instance's
        first processes, marked alike, for that instance's."""
        old_guards = guards_of(self.work_dir)
        for guard in old_guards:
            with contextlib.suppress(psutil.Error):
                guard.kill()
        psutil.wait_procs(old_guards, timeout=10)
        return kill_leftovers(self.work_dir)

    def sweep(self, keep: Iterable[WorkKey]) -> list[Path]:
        """After `recover`: remove the work folders of every key not in `keep` (the
        entities that exist) and the scratch of interrupted work. Returns the folders
        removed."""
        kept = {self._folder(k) for k in (*keep, *self._work)}
        kept |= {self.warm.root / "servers" / k for k in self.warm.servers()}
        removed = []
        with self._lock:
            for folder in sorted(self.work_dir.glob("*/*/*")):
                if folder in kept:
                    if not any(self._folder(k) == folder for k in self._work):
                        _end(folder)
                    continue
                if folder.is_dir():
                    shutil.rmtree(folder, ignore_errors=True)
                else:
                    folder.unlink(missing_ok=True)
                removed.append(folder)
            for pattern in ("*/*", "*"):  # account and kind folders left empty
                for empty in self.work_dir.glob(pattern):
                    with contextlib.suppress(OSError):
                        empty.rmdir()
        return removed

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            self._kill(list(self._work))
            self._queue.clear()
        self.warm.close()
        self._spawner.shutdown(wait=True)
        self._signal(list(self._spares.values()))
        self._spares.clear()
        if self._guard is not None:  # it sweeps what is left, then exits
            os.close(self._guard_pipe)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._guard.wait(60)
            self._guard = None


def _end(folder: Path) -> None:
    shutil.rmtree(folder / "scratch", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (folder / WORKER_FILE).unlink()


def _tail(path: Path, n: int = 600) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-n:].strip().replace("\n", " | ")
