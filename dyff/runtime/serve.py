"""Run a packaged model with `bentoml serve` on loopback, as a subprocess.

The one-machine executor serves a model this way for the evaluation
workloads; tests use it to check the real server. The server runs offline
and without telemetry, in its own process group so that stopping it stops
its workers too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from dyff.models import bento_env, unpack_bento

STOP_GRACE_S = 15.0
# How often a starting server is asked `/readyz` (a cheap local GET; each poll saved is
# time an evaluation waits).
READY_POLL_S = 0.05
# BentoML's arbiter restarts a worker whose service raised at start-up, forever; this
# line in its log says so at once.
STARTUP_FAILED_MARKER = b"Application startup failed"
# What of the caller's environment a user's service gets (no credentials, no tokens).
USER_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
TAIL_CHARS = 2000
# What `bento_env` sets: offline, no telemetry, a private BentoML home.
BENTO_ENV_KEYS = (
    "BENTOML_HOME", "BENTOML_DO_NOT_TRACK", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY", "PYTHONDONTWRITEBYTECODE",
)  # fmt: skip


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bento_target(bento: str | Path, workdir: Path, user_code: bool = False) -> str:
    """What to hand `bentoml serve`: an unpacked Bento folder, or a tag in BENTOML_HOME."""
    path = Path(bento)
    if path.is_dir():
        if not (path / "bento.yaml").is_file():
            raise ValueError(f"{path} is not a Bento folder (no bento.yaml)")
        return str(path)
    if path.is_file():
        # Unpack with dyff's checked extraction rather than BentoML's importer.
        h = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        return str(unpack_bento(path, workdir / f"bento-{h}", user_code=user_code))
    return str(bento)  # a tag, e.g. dyff-model:0123…


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# An absolute path's folders (kept: the file name, which says what failed).
_FOLDERS = re.compile(r"(?<![\w.:/>])/(?:[\w.@+~-]+/)+")


def scrub(text: str, *roots: str | Path) -> str:
    """`text` without this machine's paths: `roots` (a Bento, a work folder) and Python's
    prefixes become placeholders, any other absolute path keeps its file name only."""
    names = {str(r): "<bento>" for r in roots}
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        names.setdefault(prefix, "<python>")
    for path, placeholder in sorted(names.items(), key=lambda kv: -len(kv[0])):
        if path and path != "/":
            text = text.replace(path, placeholder)
    return _FOLDERS.sub("", text)


@dataclass
class Server:
    """A `bentoml serve` this process started: its URL, process and log."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    bento: str

    def tail(self, n: int = TAIL_CHARS) -> str:
        """The end of the server's log, without this machine's paths."""
        return scrub(_tail(self.log_path, 4 * n), self.bento, self.log_path.parent)[-n:]

    def exit_message(self) -> str | None:
        """None while the server runs; else how it ended, with the tail of its log."""
        code = self.proc.poll()
        if code is None:
            return None
        return f"the model server exited with code {code}:\n{self.tail()}"


def user_env(bentoml_home: Path) -> dict[str, str]:
    """The environment of a user's service: the allowlist, a private HOME and BentoML
    home, offline, no telemetry."""
    env = {k: os.environ[k] for k in USER_ENV_KEEP if k in os.environ}
    mine = bento_env(bentoml_home)
    env.update({k: mine[k] for k in BENTO_ENV_KEYS})
    env["HOME"] = str(bentoml_home)
    return env


class ServerFailed(RuntimeError):
    """The model server exited, failed at start-up or was not ready in time; the message
    says which, with the tail of its log (without this machine's paths)."""


@contextlib.contextmanager
def serve_bento(
    bento: str | Path,
    port: int | None = None,
    bentoml_home: Path | None = None,
    *,
    workdir: Path | None = None,
    top_k: int | None = None,
    max_batch_size: int | None = None,
    max_latency_ms: int | None = None,
    torch_threads: int | None = None,
    chunk_size: int | None = None,
    device: str | None = None,
    startup_timeout: float = 180.0,
    extra_env: dict[str, str] | None = None,
    user_code: bool = False,
) -> Iterator[str]:
    """Serve a Bento (archive file, unpacked folder or tag) on 127.0.0.1; yield its base URL.

    `port` defaults to a free one; `bentoml_home` (BENTOML_HOME of the server)
    to a temporary folder removed afterwards — never the user's ~/bentoml.
    Waits for `/readyz`; on exit stops the server and its workers (SIGTERM to
    its process group, then SIGKILL after a grace period). The server's
    output goes to `workdir/bentoml-serve-<port>.log` (workdir defaults to
    `bentoml_home/serve`). The DYFF_* knobs of dyff/runtime/service.py are
    passed as keyword arguments (not to a user's service, `user_code`).
    ServerFailed if it exits or fails before it is ready, or is not ready
    within `startup_timeout` seconds.
    """
    knobs: dict[str, int | str | None] = {
        "DYFF_TOP_K": top_k,
        "DYFF_MAX_BATCH_SIZE": max_batch_size,
        "DYFF_MAX_LATENCY_MS": max_latency_ms,
        "DYFF_TORCH_THREADS": torch_threads,
        "DYFF_CHUNK_SIZE": chunk_size,
        "DYFF_DEVICE": device,
    }
    with serving(
        bento, port, bentoml_home, workdir=workdir, knobs={} if user_code else knobs,
        startup_timeout=startup_timeout, extra_env=extra_env, user_code=user_code,
    ) as server:  # fmt: skip
        yield server.url


@contextlib.contextmanager
def serving(
    bento: str | Path,
    port: int | None = None,
    bentoml_home: Path | None = None,
    *,
    workdir: Path | None = None,
    knobs: dict[str, int | str | None] | None = None,
    startup_timeout: float = 180.0,
    extra_env: dict[str, str] | None = None,
    user_code: bool = False,
) -> Iterator[Server]:
    """`serve_bento`, yielding the Server (URL, process, log) rather than its URL."""
    with contextlib.ExitStack() as stack:
        if bentoml_home is None:
            bentoml_home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bentoml-")))
        yield stack.enter_context(
            _serve(
                bento,
                port or free_port(),
                Path(bentoml_home),
                workdir=workdir,
                knobs=knobs or {},
                startup_timeout=startup_timeout,
                extra_env=extra_env,
                user_code=user_code,
            )
        )


@contextlib.contextmanager
def _serve(
    bento: str | Path,
    port: int,
    bentoml_home: Path,
    *,
    workdir: Path | None,
    knobs: dict[str, int | str | None],
    startup_timeout: float,
    extra_env: dict[str, str] | None,
    user_code: bool,
) -> Iterator[Server]:
    bentoml_home.mkdir(parents=True, exist_ok=True)
    workdir = Path(workdir) if workdir is not None else bentoml_home / "serve"
    workdir.mkdir(parents=True, exist_ok=True)
    target = _bento_target(bento, workdir, user_code)
    env = user_env(bentoml_home) if user_code else bento_env(bentoml_home)
    env.update({k: str(v) for k, v in knobs.items() if v is not None})
    env.update(extra_env or {})
    log_path = workdir / f"bentoml-serve-{port}.log"
    cmd = [
        sys.executable, "-m", "bentoml", "serve", target,
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: Ctrl-C of the caller does not hit it
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path, target)
    try:
        try:
            wait_ready(
                server.url, startup_timeout, proc=proc, log_path=log_path, tail=False,
                interval=READY_POLL_S,
            )  # fmt: skip
        except (RuntimeError, TimeoutError) as exc:
            raise ServerFailed(f"{exc}:\n{server.tail()}") from None
        yield server
    finally:
        _stop(proc)


def wait_ready(
    url: str,
    timeout: float,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    interval: float = 0.2,
    tail: bool = True,
) -> None:
    """Wait until the model server at `url` answers `/readyz`. TimeoutError past `timeout`;
    RuntimeError if `proc` (the server, when we started it) exits first, or its log
    (`log_path`) says that its service failed to start. Both carry the tail of the log
    when given (and `tail`)."""
    deadline = time.monotonic() + timeout
    show = (lambda: f":\n{_tail(log_path)}") if log_path is not None and tail else (lambda: "")
    with httpx.Client(timeout=5.0) as client:
        while True:
            code = proc.poll() if proc is not None else None
            if code is not None:
                raise RuntimeError(f"bentoml serve exited with {code} before it was ready{show()}")
            if log_path is not None and _startup_failed(log_path):
                raise RuntimeError(f"the service failed at start-up{show()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url.rstrip('/')}/readyz").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"model server not ready after {timeout:.0f} s{show()}")
            time.sleep(interval)


def _startup_failed(log_path: Path) -> bool:
    try:
        return STARTUP_FAILED_MARKER in log_path.read_bytes()[-(1 << 20) :]
    except OSError:
        return False


def server_processes(pid: int) -> list[psutil.Process]:
    """The server process and its descendants (BentoML starts workers in their own sessions)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's group (BentoML then stops its workers), SIGKILL what is left."""
    family = server_processes(proc.pid)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_GRACE_S)
    # Workers live in sessions of their own: any the arbiter left behind are killed by
    # identity (psutil checks the start time, so a recycled pid is never hit).
    _gone, alive = psutil.wait_procs(family, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


# ---------------------------------------------------------------- users' services

# How long a model server may take to become ready (seconds).
START_TIMEOUT_ENV = "DYFF_MODEL_START_TIMEOUT_S"
DEFAULT_START_TIMEOUT_S = 600.0


def start_timeout() -> float:
    """DYFF_MODEL_START_TIMEOUT_S, or 600 s."""
    try:
        value = float(os.environ.get(START_TIMEOUT_ENV) or DEFAULT_START_TIMEOUT_S)
    except ValueError:
        return DEFAULT_START_TIMEOUT_S
    return value if value > 0 else DEFAULT_START_TIMEOUT_S


def probe_image() -> bytes:
    """A small gray PNG: what a test request classifies."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


def probe_service(bento: Path, workdir: Path, *, timeout: float | None = None) -> list[str]:
    """Serve a user's Bento once, as an evaluation will (`user_code`: its own code, its own
    process, no credentials), read its labels from `/metadata` and classify one image.
    Returns the labels; WorkloadFailed (ModelServerFailed with the tail of its log,
    ProtocolViolation, ModelServerError, TopKUnavailable) when it cannot."""
    from dyff.errors import WorkloadFailed
    from dyff.models import MODEL_SERVER_FAILED
    from dyff.runtime.client import ServiceClient, ServiceError

    workdir = Path(workdir)
    try:
        with (
            serving(
                bento,
                bentoml_home=workdir / "home",
                workdir=workdir / "serve",
                startup_timeout=timeout or start_timeout(),
                user_code=True,
            ) as server,
            ServiceClient(
                server.url,
                timeout=120.0,
                exited=server.exit_message,
                scrub=lambda text: scrub(text, server.bento, workdir),
            ) as client,
        ):
            labels = client.labels
            # The protocol's minimum answer: the best min(5, labels).
            client.classify([probe_image()], top_k=5)
    except ServerFailed as exc:
        raise WorkloadFailed(MODEL_SERVER_FAILED, str(exc)) from None
    except ServiceError as exc:
        raise WorkloadFailed(exc.reason, exc.message) from None
    return labels


# ---------------------------------------------------------------- warm servers

# Set by `dyff up` (controller/executors/warm.py) in its workloads' environment: the Unix
# socket of its pool of warm model servers.
WARM_POOL_ENV = "DYFF_WARM_POOL"


# Two processes may compute a process's start time a little apart (psutil derives it from
# the boot time); a pid is never reused within this.
CREATE_TIME_SLACK_S = 0.5


class WarmUnavailable(RuntimeError):
    """The pool could not be reached (or answered nonsense): start a server as usual."""


@dataclass
class LeasedServer:
    """A warm server of the pool, leased for one run: its URL, pid (and start time, so a
    recycled pid is never taken for it) and log."""

    url: str
    pid: int
    create_time: float
    log_path: Path
    bento: str
    started: bool  # the pool started it for this lease (a cold start)

    def tail(self, n: int = TAIL_CHARS) -> str:
        return scrub(_tail(self.log_path, 4 * n), self.bento, self.log_path.parent)[-n:]

    def exit_message(self) -> str | None:
        """None while the server runs; else how it ended, with the tail of its log."""
        try:
            proc = psutil.Process(self.pid)
            if (
                abs(proc.create_time() - self.create_time) < CREATE_TIME_SLACK_S
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                return None
        except psutil.Error:
            pass
        return f"the model server exited:\n{self.tail()}"


@contextlib.contextmanager
def lease_warm(path: str, request: dict[str, object], timeout: float) -> Iterator[LeasedServer]:
    """Lease a server from the warm pool listening at `path` for `request` (see
    controller/executors/warm.py), held until the block ends (or this process does).
    WarmUnavailable when the pool cannot be reached; ServerFailed when the server it
    started failed, as a server started here would."""
    import json

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.settimeout(5.0)
            sock.connect(path)
            sock.settimeout(timeout + 30.0)
            sock.sendall(json.dumps(request).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise WarmUnavailable("the warm pool closed the connection")
                data += chunk
            reply = json.loads(data)
        except (OSError, ValueError) as exc:
            raise WarmUnavailable(str(exc)) from None
        if "error" in reply:
            if reply.get("serverFailed"):
                raise ServerFailed(str(reply["error"]))
            raise WarmUnavailable(str(reply["error"]))
        if reply.get("none"):  # a `peek`: no server of this model is running
            raise WarmUnavailable("no warm server for this model")
        yield LeasedServer(
            str(reply["url"]),
            int(reply["pid"]),
            float(reply["createTime"]),
            Path(reply["log"]),
            str(reply["bento"]),
            bool(reply.get("started")),
        )
    finally:
        sock.close()  # ends the lease: the pool's idle clock starts


def prestart_warm(path: str, request: dict[str, object]) -> bool:
    """Ask the warm pool at `path` to start the server for `request` for a later
    evaluation (`mode: prestart`); returns at once, whether the pool took the request."""
    import json

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(path)
            sock.sendall(json.dumps({**request, "mode": "prestart"}).encode() + b"\n")
            return b"accepted" in sock.recv(1024)
    except OSError:
        return False
