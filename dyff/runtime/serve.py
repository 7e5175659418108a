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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from dyff.models import bento_env, unpack_bento

STOP_GRACE_S = 15.0


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bento_target(bento: str | Path, workdir: Path) -> str:
    """What to hand `bentoml serve`: an unpacked Bento folder, or a tag in BENTOML_HOME."""
    path = Path(bento)
    if path.is_dir():
        if not (path / "bento.yaml").is_file():
            raise ValueError(f"{path} is not a Bento folder (no bento.yaml)")
        return str(path)
    if path.is_file():
        # Unpack with dyff's checked extraction rather than BentoML's importer.
        h = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        return str(unpack_bento(path, workdir / f"bento-{h}"))
    return str(bento)  # a tag, e.g. dyff-model:0123…


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


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
) -> Iterator[str]:
    """Serve a Bento (archive file, unpacked folder or tag) on 127.0.0.1; yield its base URL.

    `port` defaults to a free one; `bentoml_home` (BENTOML_HOME of the server)
    to a temporary folder removed afterwards — never the user's ~/bentoml.
    Waits for `/readyz`; on exit stops the server and its workers (SIGTERM to
    its process group, then SIGKILL after a grace period). The server's
    output goes to `workdir/bentoml-serve-<port>.log` (workdir defaults to
    `bentoml_home/serve`). The DYFF_* knobs of dyff/runtime/service.py are
    passed as keyword arguments.
    """
    with contextlib.ExitStack() as stack:
        if bentoml_home is None:
            bentoml_home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bentoml-")))
        yield stack.enter_context(
            _serve(
                bento,
                port or free_port(),
                Path(bentoml_home),
                workdir=workdir,
                knobs={
                    "DYFF_TOP_K": top_k,
                    "DYFF_MAX_BATCH_SIZE": max_batch_size,
                    "DYFF_MAX_LATENCY_MS": max_latency_ms,
                    "DYFF_TORCH_THREADS": torch_threads,
                    "DYFF_CHUNK_SIZE": chunk_size,
                    "DYFF_DEVICE": device,
                },
                startup_timeout=startup_timeout,
                extra_env=extra_env,
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
) -> Iterator[str]:
    bentoml_home.mkdir(parents=True, exist_ok=True)
    workdir = Path(workdir) if workdir is not None else bentoml_home / "serve"
    workdir.mkdir(parents=True, exist_ok=True)
    target = _bento_target(bento, workdir)
    env = bento_env(bentoml_home)
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
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, startup_timeout, proc=proc, log_path=log_path)
        yield url
    finally:
        _stop(proc)


def wait_ready(
    url: str,
    timeout: float,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    interval: float = 0.2,
) -> None:
    """Wait until the model server at `url` answers `/readyz`. TimeoutError past `timeout`;
    RuntimeError if `proc` (the server, when we started it) exits first. Both carry the
    tail of `log_path` when given."""
    deadline = time.monotonic() + timeout
    tail = (lambda: f":\n{_tail(log_path)}") if log_path is not None else (lambda: "")
    with httpx.Client(timeout=5.0) as client:
        while True:
            code = proc.poll() if proc is not None else None
            if code is not None:
                raise RuntimeError(f"bentoml serve exited with {code} before it was ready{tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url.rstrip('/')}/readyz").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"model server {url} not ready after {timeout:.0f} s{tail()}")
            time.sleep(interval)


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
