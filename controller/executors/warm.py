"""Warm model servers of `dyff up`: a model served for one evaluation stays up for an idle
period after it, and the next evaluation of the same model with the same serving settings
connects to it instead of starting `bentoml serve` again (4-6 s).

The pool lives in the `dyff up` process (owned by its LocalExecutor). Evaluate workloads
reach it through a Unix socket whose path is in their environment (WARM_POOL_ENV): a
workload sends one JSON line — the model (account, name, digest), the Bento archive it
downloaded, the DYFF_* knobs and environment it would give a server it started itself, and
whether the service is the user's own code — and reads back the server's URL, pid and log.
The server is started with `dyff.runtime.serve.serving`, the code a cold start uses, with
those very settings: predictions are the same either way.

- **Key**: the model's account, name and digest, user-code or dyff's own service, every
  knob and environment variable the server gets (top-k, chunk size, threads, batching,
  device, OMP policy). Any difference is another server.
- **Lease**: the workload's connection. While it is open the server is in use; when it
  closes — the workload ended, however, SIGKILL included — the idle clock starts.
- **Modes** (the request's `mode`): `lease` (the default: start the server if there is
  none); `peek` (lease only a server already running, else answer `{"none": true}`: the
  workload then runs dyff's own model in its own process, `dyff.runtime.in_process`);
  `prestart` (start the server if there is none and hold no lease: the next evaluation of
  that model finds it warm; answered at once).
- **Idle expiry**: DYFF_WARM_IDLE_S (default 300 s; 0 turns warm servers off: the
  workloads start their own, as before). **Bound**: DYFF_WARM_MAX (default 2) servers not
  in use; past it the least recently used is stopped.
- **Deleting a model** stops its servers (`stop_model`); closing the pool stops them all.
- **Never outliving `dyff up`**: every server carries `DYFF_WORK_DIR` set to its folder
  under the executor's work folder, so the executor's guard kills it when `dyff up` dies
  (SIGKILL included), and `recover()` on the next start kills one a killed instance left.
- **Liveness**: the reply carries the server's pid and start time; the workload checks that
  process as it would the one it started (`dyff.workloads.evaluate`), so a server that dies
  mid-run fails the run within a second.

Image-form models (containers) are not kept warm: each evaluation starts its container.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socketserver
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import psutil

from controller.executors.guard import WORK_DIR_ENV, kill_leftovers
from dyff.runtime.serve import serving

log = logging.getLogger("dyff.controller.warm")

WARM_IDLE_ENV = "DYFF_WARM_IDLE_S"
WARM_MAX_ENV = "DYFF_WARM_MAX"
DEFAULT_IDLE_S = 300.0
DEFAULT_MAX = 2
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 108 bytes


def idle_seconds() -> float:
    """DYFF_WARM_IDLE_S, or 300; 0 (or less) turns warm servers off."""
    try:
        return max(0.0, float(os.environ.get(WARM_IDLE_ENV) or DEFAULT_IDLE_S))
    except ValueError:
        return DEFAULT_IDLE_S


def max_servers() -> int:
    """DYFF_WARM_MAX, or 2 (at least 1)."""
    try:
        return max(1, int(os.environ.get(WARM_MAX_ENV) or DEFAULT_MAX))
    except ValueError:
        return DEFAULT_MAX


def server_key(request: dict[str, Any]) -> str:
    """What makes two requests the same server: model, code, every setting."""
    what = {
        "account": request["account"],
        "model": request["model"],
        "digest": request["digest"],
        "userCode": bool(request.get("userCode")),
        "knobs": {k: v for k, v in (request.get("knobs") or {}).items() if v is not None},
        "env": request.get("env") or {},
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class _Entry:
    key: str
    account: str
    model: str
    folder: Path
    stack: contextlib.ExitStack
    server: Any  # dyff.runtime.serve.Server
    leases: int = 0
    last_used: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        if self.server.proc.poll() is not None:
            return False
        try:  # poll() answers None while another thread waits on the process
            return bool(psutil.Process(self.server.proc.pid).status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return False


class WarmPool:
    """Warm model servers under `root` (a folder of the executor's work folder)."""

    def __init__(self, root: Path, idle_s: float | None = None, max_idle: int | None = None):
        self.root = root
        self.idle_s = idle_seconds() if idle_s is None else idle_s
        self.max_idle = max_servers() if max_idle is None else max_idle
        self.starts = 0  # servers started (for tests and benches)
        self._entries: dict[str, _Entry] = {}
        self._starting: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._threads: list[threading.Thread] = []
        self._tmp: str | None = None
        self.socket_path: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.idle_s > 0

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Listen on the pool's socket and expire idle servers; idempotent."""
        if self._server is not None or not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "pool.sock"
        if len(str(path)) > MAX_SOCKET_PATH:
            self._tmp = tempfile.mkdtemp(prefix="dyff-warm-")
            path = Path(self._tmp) / "pool.sock"
        path.unlink(missing_ok=True)
        pool = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                pool._handle(self.rfile, self.wfile)

        server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        server.daemon_threads = True
        os.chmod(path, 0o600)
        self._server, self.socket_path = server, path
        for target, name in ((server.serve_forever, "dyff-warm"), (self._expire, "dyff-warm-idle")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop listening and stop every server."""
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        self._stop(entries)
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def servers(self) -> list[str]:
        """The keys of the running servers."""
        with self._lock:
            return list(self._entries)

    def pids(self) -> list[int]:
        with self._lock:
            return [e.server.proc.pid for e in self._entries.values()]

    def stop_model(self, account: str, name: str) -> int:
        """Stop the servers of model `account/name` (it is deleted); returns how many."""
        with self._lock:
            gone = [e for e in self._entries.values() if (e.account, e.model) == (account, name)]
            for e in gone:
                del self._entries[e.key]
        self._stop(gone)
        return len(gone)

    # ----------------------------------------------------------------- requests

    def _handle(self, rfile: Any, wfile: Any) -> None:
        try:
            request = json.loads(rfile.readline() or b"{}")
        except ValueError:
            return
        mode = request.get("mode") or "lease"
        if mode == "prestart":
            self._prestart(request, wfile)
            return
        try:
            found = self.acquire(request, start=mode != "peek")
            if found is None:
                with contextlib.suppress(OSError):
                    wfile.write(b'{"none": true}\n')
                    wfile.flush()
                return
            entry, started = found
        except Exception as exc:  # the workload reports it, as a cold start would
            failed = type(exc).__name__ == "ServerFailed"
            reply = {"error": str(exc), "serverFailed": failed}
            with contextlib.suppress(OSError):
                wfile.write(json.dumps(reply).encode() + b"\n")
                wfile.flush()
            return
        try:
            proc = entry.server.proc
            created = psutil.Process(proc.pid).create_time()
            reply = {
                "url": entry.server.url,
                "pid": proc.pid,
                "createTime": created,
                "log": str(entry.server.log_path),
                "bento": str(entry.server.bento),
                "started": started,
            }
            wfile.write(json.dumps(reply).encode() + b"\n")
            wfile.flush()
            rfile.read()  # the lease: until the workload closes its end, however it ends
        except Exception:  # a broken connection ends the lease all the same
            log.debug("warm lease ended abnormally", exc_info=True)
        finally:
            self.release(entry)

    @overload
    def acquire(self, request: dict[str, Any]) -> tuple[_Entry, bool]: ...

    @overload
    def acquire(self, request: dict[str, Any], start: bool) -> tuple[_Entry, bool] | None: ...

    def acquire(self, request: dict[str, Any], start: bool = True) -> tuple[_Entry, bool] | None:
        """The running server for `request` (leased: `release` it), started if there is
        none (None instead, without `start`); whether it was started now. ServerFailed as
        `serving` raises it."""
        key = server_key(request)
        if not start:
            with self._lock:
                entry = self._entries.get(key)
                if entry is None or not entry.alive():
                    return None
                entry.leases += 1
                entry.last_used = time.monotonic()
                return entry, False
        with self._lock:
            starting = self._starting.setdefault(key, threading.Lock())
        with starting:  # one start per key at a time; other keys start in parallel
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry.alive():
                    entry.leases += 1
                    entry.last_used = time.monotonic()
                    return entry, False
                dead = self._entries.pop(key, None)
            if dead is not None:
                self._stop([dead])
            entry = self._start(key, request)
            with self._lock:
                entry.leases += 1
                self._entries[key] = entry
                self.starts += 1
        self._trim()
        return entry, True

    def _prestart(self, request: dict[str, Any], wfile: Any) -> None:
        """Start the server for `request` with no lease. The workload does not wait for the
        start, and its scratch (the Bento it downloaded) goes when it exits: the pool takes
        its own link (or copy) of the Bento before it answers."""
        staged = self.root / "incoming" / f"{server_key(request)}-{uuid.uuid4().hex}.bento"
        try:
            staged.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(request["bento"], staged)
            except OSError:
                shutil.copyfile(request["bento"], staged)
        except (OSError, KeyError, TypeError):
            log.warning("prestart: cannot take the Bento %r", request.get("bento"), exc_info=True)
            return
        with contextlib.suppress(OSError):
            wfile.write(b'{"accepted": true}\n')
            wfile.flush()
        try:
            entry, _ = self.acquire({**request, "bento": str(staged)})
        except Exception as exc:  # nobody waits for it: the next evaluation starts its own
            if self._closing.is_set():  # `dyff up` stopping ended it: nothing went wrong
                log.info("prestart of a warm server ended by shutdown")
            else:
                log.warning("prestarting a warm server failed: %s", exc, exc_info=True)
            return
        finally:
            staged.unlink(missing_ok=True)  # unpacked into the server's folder by now
        self.release(entry)

    def release(self, entry: _Entry) -> None:
        with self._lock:
            entry.leases = max(0, entry.leases - 1)
            entry.last_used = time.monotonic()
        self._trim()

    def _start(self, key: str, request: dict[str, Any]) -> _Entry:
        folder = self.root / "servers" / key
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        env = {**(request.get("env") or {}), WORK_DIR_ENV: str(folder.resolve())}
        stack = contextlib.ExitStack()
        try:
            server = stack.enter_context(
                serving(
                    request["bento"],
                    bentoml_home=folder / "bentoml-home",
                    workdir=folder / "serve",
                    knobs=request.get("knobs") or {},
                    startup_timeout=float(request.get("startupTimeout") or 300.0),
                    extra_env=env,
                    user_code=bool(request.get("userCode")),
                )
            )
        except BaseException:
            stack.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        log.info("warm server %s for %s/%s at %s", key, request["account"], request["model"],
                 server.url)  # fmt: skip
        return _Entry(key, request["account"], request["model"], folder, stack, server)

    # ------------------------------------------------------------------ expiry

    def _trim(self) -> None:
        """Stop the least recently used servers not in use past the bound."""
        with self._lock:
            idle = sorted(
                (e for e in self._entries.values() if e.leases == 0), key=lambda e: e.last_used
            )
            gone = idle[: max(0, len(idle) - self.max_idle)]
            for e in gone:
                del self._entries[e.key]
        self._stop(gone)

    def expire(self, now: float | None = None) -> int:
        """Stop servers idle for `idle_s` or dead while not in use; returns how many."""
        now = time.monotonic() if now is None else now
        with self._lock:
            gone = [
                e
                for e in self._entries.values()
                if e.leases == 0 and (now - e.last_used >= self.idle_s or not e.alive())
            ]
            for e in gone:
                del self._entries[e.key]
        self._stop(gone)
        return len(gone)

    def _expire(self) -> None:
        tick = min(1.0, max(0.05, self.idle_s / 4))
        while not self._closing.wait(tick):
            try:
                self.expire()
            except Exception:  # the next tick tries again
                log.exception("expiring warm servers")

    @staticmethod
    def _stop(entries: list[_Entry]) -> None:
        def stop(entry: _Entry) -> None:
            try:
                entry.stack.close()  # `serving` stops the server and its workers
            except Exception:
                log.exception("stopping warm server %s", entry.key)
            # Workers orphaned by a server that died (their own sessions) still carry
            # the folder's mark.
            kill_leftovers(entry.folder)
            shutil.rmtree(entry.folder, ignore_errors=True)

        threads = [threading.Thread(target=stop, args=(e,), daemon=True) for e in entries]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
