"""Start the real Google Cloud emulators on loopback, for tests, benchmarks and development.

- Cloud Datastore: the emulator shipped with google-cloud-cli (Java). It is
  started through its own script, not `gcloud`, which would write into
  ~/.config.
- Cloud Storage: `gcp-storage-emulator` from PyPI, in-memory, in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DATASTORE_SCRIPT = Path("platform/cloud-datastore-emulator/cloud_datastore_emulator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gcloud_sdk_root() -> Path | None:
    """The google-cloud-cli installation, found without running gcloud where possible."""
    env = os.environ.get("CLOUDSDK_ROOT_DIR")
    candidates = [Path(env)] if env else []
    candidates += [
        Path("/usr/lib/google-cloud-sdk"),
        Path("/usr/share/google-cloud-sdk"),
        Path("/opt/google-cloud-sdk"),
    ]
    gcloud = shutil.which("gcloud")
    if gcloud:
        candidates.append(Path(gcloud).resolve().parent.parent)
    return next((c for c in candidates if (c / DATASTORE_SCRIPT).exists()), None)


def datastore_emulator_missing() -> str | None:
    """Why the Datastore emulator cannot run here, or None if it can."""
    root = gcloud_sdk_root()
    if root is None:
        return (
            "Cloud Datastore emulator not found: install google-cloud-cli with its "
            "cloud-datastore-emulator component (looked for " + str(DATASTORE_SCRIPT) + ")"
        )
    if shutil.which("java") is None:
        return "Cloud Datastore emulator needs Java 17+, and `java` is not on PATH"
    return None


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"emulator not ready after {timeout}s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Emulator:
    host: str  # host:port
    env: dict[str, str]


@contextmanager
def datastore_emulator(
    project: str = "dyff-test", index_file: Path | None = None
) -> Iterator[Emulator]:
    """The Cloud Datastore emulator on a free port, in memory, strongly consistent.

    With `index_file`, queries needing a composite index it does not list fail,
    as they would in production.
    """
    missing = datastore_emulator_missing()
    if missing:
        raise RuntimeError(missing)
    root = gcloud_sdk_root()
    assert root is not None
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dyff-datastore-") as data:
        log = Path(data) / "emulator.log"
        args = [
            str(root / DATASTORE_SCRIPT),
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--store_on_disk=False",
            "--consistency=1.0",
        ]
        if index_file is not None:
            args += [f"--index_file={index_file}", "--require_indexes"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*args, data],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_http(f"http://127.0.0.1:{port}/", proc, 60, log)
            host = f"127.0.0.1:{port}"
            yield Emulator(host, {"DATASTORE_EMULATOR_HOST": host, "DATASTORE_PROJECT_ID": project})
        finally:
            # The script starts java as a child: stop the whole group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            _stop(proc)


@contextmanager
def gcs_emulator() -> Iterator[Emulator]:
    """gcp-storage-emulator on a free port, in memory."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dyff-gcs-") as data:
        log = Path(data) / "emulator.log"
        exe = Path(sys.executable).parent / "gcp-storage-emulator"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(exe), "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_http(f"http://127.0.0.1:{port}/storage/v1/b", proc, 30, log)
            url = f"http://127.0.0.1:{port}"
            yield Emulator(url, {"STORAGE_EMULATOR_HOST": url})
        finally:
            _stop(proc)
