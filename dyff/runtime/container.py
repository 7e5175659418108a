"""Run an image-form model on one machine: a locked-down Docker or Podman container.

The container runs a user's image, so it gets as little as the engine allows
(`container_command`, a pure function, builds the whole command line):

- its port published on 127.0.0.1 only, at a free port of the host;
- no host mounts; a read-only root filesystem with tmpfs /tmp and /work;
- every capability dropped, `no-new-privileges`, numeric user 10001:10001,
  a pids limit, and the memory/CPU (and GPU) limits of `spec.resources`;
- its own network namespace: Docker's default bridge, Podman's slirp4netns
  with `allow_host_loopback=false`. From there the host's loopback services
  (where dyff on one machine keeps its API and everything else binds) cannot
  be reached. The container may still reach other networks, as any bridged
  container can; on Kubernetes a NetworkPolicy closes that too;
- nothing of dyff's environment: only a HOME on the tmpfs and BentoML's
  do-not-track switch;
- removed (`rm -f`) when the evaluation ends, whatever its outcome.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import httpx

from dyff.schema import Resources

USER = "10001:10001"
PIDS_LIMIT = 1024
TMPFS_SIZE = "1g"
LABEL = "dyff.io/model-server=true"
LOG_LINES = 40
TAIL_CHARS = 2000
ENGINE_TIMEOUT_S = 60.0

_BINARY = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")


class ContainerFailed(RuntimeError):
    """The container did not start, exited, or was not ready in time (with its log)."""


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (`4Gi`, `512M`, `1000000`) in bytes."""
    m = _QUANTITY.match(quantity.strip())
    if m is None:
        raise ValueError(f"memory {quantity!r} is not a quantity like 4Gi or 512M")
    try:
        value = Decimal(m[1])
    except InvalidOperation:
        raise ValueError(f"memory {quantity!r} is not a number") from None
    unit = m[2] or ""
    return int(value * (_BINARY.get(unit) or _DECIMAL.get(unit) or 1))


def cpus(quantity: str) -> str:
    """A Kubernetes CPU quantity (`2`, `500m`) as the engine's `--cpus` value."""
    q = quantity.strip()
    try:
        value = Decimal(q[:-1]) / 1000 if q.endswith("m") else Decimal(q)
    except InvalidOperation:
        raise ValueError(f"cpu {quantity!r} is not a quantity like 2 or 500m") from None
    if value <= 0:
        raise ValueError(f"cpu {quantity!r} must be positive")
    return format(value.normalize(), "f")


def container_command(
    engine: str,
    reference: str,
    *,
    port: int,
    host_port: int,
    name: str,
    resources: Resources | None = None,
) -> list[str]:
    """The `docker run` / `podman run` command line for an image-form model server."""
    if engine not in ("docker", "podman"):
        raise ValueError(f"unknown container engine {engine!r}")
    network = "slirp4netns:allow_host_loopback=false" if engine == "podman" else "bridge"
    cmd = [
        engine, "run", "--detach", "--name", name, "--label", LABEL,
        "--publish", f"127.0.0.1:{host_port}:{port}",
        "--network", network,
        "--read-only",
        "--tmpfs", f"/tmp:rw,nosuid,nodev,size={TMPFS_SIZE}",
        "--tmpfs", f"/work:rw,nosuid,nodev,size={TMPFS_SIZE}",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--user", USER,
        "--pids-limit", str(PIDS_LIMIT),
        "--env", "HOME=/tmp",
        "--env", "BENTOML_HOME=/tmp/bentoml",
        "--env", "BENTOML_DO_NOT_TRACK=true",
    ]  # fmt: skip
    if resources is not None and resources.memory:
        cmd += ["--memory", str(memory_bytes(resources.memory))]
    if resources is not None and resources.cpu:
        cmd += ["--cpus", cpus(resources.cpu)]
    if resources is not None and resources.gpu:
        if engine == "docker":
            cmd += ["--gpus", str(resources.gpu)]
        else:
            cmd += ["--device", "nvidia.com/gpu=all"]
    return [*cmd, reference]


@dataclass
class Container:
    """A running model-server container: its URL, and how to see whether it ended."""

    engine: str
    name: str
    url: str

    def _engine(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.engine, *args],
            capture_output=True,
            text=True,
            timeout=ENGINE_TIMEOUT_S,
            check=False,
        )

    def tail(self) -> str:
        out = self._engine("logs", "--tail", str(LOG_LINES), self.name)
        return (out.stdout + out.stderr)[-TAIL_CHARS:]

    def exit_message(self) -> str | None:
        """None while the container runs; else its exit code and the end of its log."""
        state = self._engine(
            "inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", self.name
        )
        running, _, code = state.stdout.strip().partition(" ")
        if state.returncode == 0 and running == "true":
            return None
        return f"the model container exited with code {code or '?'}:\n{self.tail()}"


@contextlib.contextmanager
def run_container(
    engine: str,
    reference: str,
    port: int,
    *,
    resources: Resources | None = None,
    startup_timeout: float = 600.0,
) -> Iterator[Container]:
    """Run the image locked down (`container_command`), wait for its `/readyz`, yield it,
    remove it afterwards. ContainerFailed if it does not start, exits, or is not ready in
    `startup_timeout` seconds (pulling the image counts)."""
    from dyff.runtime.serve import free_port

    host_port = free_port()
    name = f"dyff-model-{uuid.uuid4().hex[:12]}"
    cmd = container_command(
        engine, reference, port=port, host_port=host_port, name=name, resources=resources
    )
    container = Container(engine, name, f"http://127.0.0.1:{host_port}")
    try:
        try:
            started = subprocess.run(
                cmd, capture_output=True, text=True, timeout=startup_timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise ContainerFailed(f"{engine} run took more than {startup_timeout:.0f} s") from None
        if started.returncode != 0:
            raise ContainerFailed(
                f"{engine} run failed ({started.returncode}): {started.stderr[-TAIL_CHARS:]}"
            )
        _wait_ready(container, startup_timeout)
        yield container
    finally:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(
                [engine, "rm", "--force", name],
                capture_output=True,
                timeout=ENGINE_TIMEOUT_S,
                check=False,
            )


def _wait_ready(container: Container, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while True:
            ended = container.exit_message()
            if ended is not None:
                raise ContainerFailed(ended)
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{container.url}/readyz").status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ContainerFailed(
                    f"the model container was not ready after {timeout:.0f} s:\n{container.tail()}"
                )
            time.sleep(0.5)
