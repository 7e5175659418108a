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
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from dyff.config import Settings

LOCAL_ACCOUNT = "local"
log = logging.getLogger("dyff.up")


def up(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8765, help="Port to listen on."),
    workers: int = typer.Option(2, help="Workloads running at once."),
) -> None:
    """Run dyff on this machine: the API, the controller and local workloads, with SQLite
    and a blob folder under DYFF_DATA_DIR. Ctrl-C stops it; starting again resumes."""
    from dyff.config import load_settings

    run(load_settings(), host=host, port=port, max_parallel=workers)


def run(settings: Settings, *, host: str, port: int, max_parallel: int = 2) -> None:
    # The apps are imported here: `dyff --help` loads this module and should stay quick.
    import uvicorn

    from api_shim.app import create_app
    from controller.executors.local import LocalExecutor
    from controller.local import LocalDriver
    from dyff import accounts
    from dyff.client import ClientConfig
    from dyff.errors import AlreadyExists
    from dyff.schema import Account
    from dyff.stores import open_blobs, open_records

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    records, blobs = open_records(settings.records), open_blobs(settings.blobs)
    url = f"http://{host}:{port}"
    if records.find(Account, LOCAL_ACCOUNT, LOCAL_ACCOUNT) is None:
        with contextlib.suppress(AlreadyExists):  # a concurrent start made it
            accounts.create_account(records, LOCAL_ACCOUNT, "this machine")
    # A fresh key each start: the old one was shown once and is not stored anywhere.
    token, _ = accounts.mint_key(records, LOCAL_ACCOUNT, expires_in=timedelta(days=30))
    config_file = ClientConfig(url, token).save()

    executor = LocalExecutor(
        settings.records, settings.blobs, settings.data_dir / "work", max_parallel=max_parallel
    )
    driver = LocalDriver(records, blobs, executor)
    stop = threading.Event()
    loop = threading.Thread(target=driver.run, args=(stop,), name="dyff-controller", daemon=True)
    app = create_app(records, blobs, public_url=url, cache_dir=settings.data_dir / "cache")
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))

    print(f"dyff is up at {url}", flush=True)
    print(f"API key (account {LOCAL_ACCOUNT!r}): {token}", flush=True)
    print(f"data: {settings.data_dir}   client config: {config_file}", flush=True)
    loop.start()
    try:
        server.run()  # returns on Ctrl-C / SIGTERM
    finally:
        stop.set()
        loop.join(30)
        executor.close()
        records.close()
        print("dyff stopped", flush=True)
