"""`dyff up`: the embedded default on one machine — the HTTP API, the controller's local
driver and local workloads in one command, records in SQLite and blobs in a folder
under the data directory. Ctrl-C stops it all; starting again resumes unfinished work
(the reconcilers see no work for unfinished objects and start it again).

It wires the two apps together, so it lives beside them rather than in the `dyff`
library: the command line (`dyff.cli`) finds the `up` command through the entry-point
group `dyff.commands` (pyproject.toml), and `dyff/` imports neither app.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from dyff.config import Settings

LOCAL_ACCOUNT = "local"
LOCK_FILE = "up.lock"
log = logging.getLogger("dyff.up")


class DataDirBusy(RuntimeError):
    """Another `dyff up` runs on the same data directory."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data directory's exclusive lock (held until the returned file is closed or
    the process ends, however); DataDirBusy if another process holds it."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise DataDirBusy(
            f"another `dyff up` (pid {holder}) is running on {data_dir}; stop it first"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops everything as Ctrl-C does


def _on_sigterm(handler: Callable[[int, FrameType | None], Any] | int) -> None:
    """Set SIGTERM's handler where Python allows it (the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def up(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8765, help="Port to listen on."),
    workers: int = typer.Option(2, help="Workloads running at once."),
) -> None:
    """Run dyff on this machine: the API, the controller and local workloads, with SQLite
    and a blob folder under DYFF_DATA_DIR. Ctrl-C stops it; starting again resumes."""
    from dyff.config import load_settings

    try:
        run(load_settings(), host=host, port=port, max_parallel=workers)
    except DataDirBusy as exc:
        typer.echo(f"dyff up: {exc}", err=True)
        raise typer.Exit(1) from None


def run(settings: Settings, *, host: str, port: int, max_parallel: int = 2) -> None:
    """Run until Ctrl-C or SIGTERM (returns then); DataDirBusy if the data directory is
    in use."""
    # The apps are imported here: `dyff --help` loads this module and should stay quick.
    import uvicorn

    from api_shim.app import create_app
    from controller.executors.local import LocalExecutor
    from controller.local import LocalDriver
    from controller.reconcile import KINDS
    from dyff import accounts
    from dyff.client import ClientConfig
    from dyff.errors import AlreadyExists
    from dyff.schema import Account
    from dyff.stores import open_blobs, open_records
    from dyff.stores.sqlite import SqliteRecordStore

    lock = lock_data_dir(settings.data_dir)
    previous = signal.getsignal(signal.SIGTERM)
    _on_sigterm(_terminate)
    executor = records = None
    try:
        executor = LocalExecutor(
            settings.records, settings.blobs, settings.data_dir / "work", max_parallel=max_parallel
        )
        # Before anything opens the records or starts work: what a killed instance left.
        if killed := executor.recover():
            print(f"stopped {killed} processes left by a previous dyff up", flush=True)
        records, blobs = open_records(settings.records), open_blobs(settings.blobs)
        if isinstance(records, SqliteRecordStore):
            records.compact()
        existing = [(k.kind_name, e.account, e.name) for k in KINDS for e in records.scan(k)]
        executor.sweep(existing)
        url = f"http://{host}:{port}"
        if records.find(Account, LOCAL_ACCOUNT, LOCAL_ACCOUNT) is None:
            with contextlib.suppress(AlreadyExists):  # a concurrent start made it
                accounts.create_account(records, LOCAL_ACCOUNT, "this machine")
        # A fresh key each start: the old one was shown once and is not stored anywhere.
        token, _ = accounts.mint_key(records, LOCAL_ACCOUNT, expires_in=timedelta(days=30))
        config_file = ClientConfig(url, token).save()

        driver = LocalDriver(records, blobs, executor)
        # Event-driven: the shim's writes and workloads' exits start a pass at once.
        records.on_write(driver.wake)
        executor.on_exit = driver.wake
        stop = threading.Event()
        loop = threading.Thread(
            target=driver.run, args=(stop,), name="dyff-controller", daemon=True
        )
        app = create_app(
            records,
            blobs,
            public_url=url,
            cache_dir=settings.data_dir / "cache",
            upload_ttl=timedelta(seconds=settings.upload_ttl_seconds),
        )
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

        print(f"dyff is up at {url}", flush=True)
        print(f"web view: {url}/ui (log in with the API key below)", flush=True)
        print(f"API key (account {LOCAL_ACCOUNT!r}): {token}", flush=True)
        print(f"data: {settings.data_dir}   client config: {config_file}", flush=True)
        loop.start()
        try:
            # Returns on Ctrl-C / SIGTERM; uvicorn then raises the signal again, which
            # `_terminate` (SIGTERM) and Python (SIGINT) turn into KeyboardInterrupt.
            server.run()
        finally:
            _on_sigterm(signal.SIG_IGN)  # let the cleanup finish
            stop.set()
            loop.join(30)
    except KeyboardInterrupt:
        pass
    finally:
        _on_sigterm(signal.SIG_IGN)
        if executor is not None:
            executor.close()
        if records is not None:
            records.close()
        lock.close()
        if previous is not None:
            _on_sigterm(previous)
        print("dyff stopped", flush=True)
