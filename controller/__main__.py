"""`python -m controller run`: the kopf controller of the Deployment (config/base).

kopf runs standalone (no kopf peering) and cluster-wide (accounts are namespaces), with
its liveness endpoint on 0.0.0.0:8080/healthz (DYFF_LIVENESS_ENDPOINT overrides it), and
only in the replica that holds the Lease (controller/leader.py); a standby answers its
probe and waits. It refuses a cluster older than Kubernetes 1.29 (native sidecars). Stores
and executor come from DYFF_* variables (see Controller.from_env).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

LIVENESS = "http://0.0.0.0:8080/healthz"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the kopf controller")
    run.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )

    from kubernetes.config import ConfigException

    from controller.kopf_adapter import Controller
    from controller.kopf_adapter import run as run_operator
    from controller.kube import unsupported_server
    from controller.leader import Leadership, standby_probe
    from controller.leader import namespace as leader_namespace
    from dyff.errors import ConfigError

    try:
        controller = Controller.from_env()
    except (ConfigError, ValueError) as exc:
        print(f"dyff controller: {exc}", file=sys.stderr)
        return 2
    except ConfigException as exc:  # neither in a Pod nor with a kubeconfig
        print(f"dyff controller: no Kubernetes API to talk to: {exc}", file=sys.stderr)
        return 2
    from controller.executors.kubernetes import KubernetesExecutor

    jobs = isinstance(controller.executor, KubernetesExecutor)
    if jobs and (why := unsupported_server(controller.api.server_version())):
        print(f"dyff controller: {why}", file=sys.stderr)
        return 2

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        liveness = os.environ.get("DYFF_LIVENESS_ENDPOINT", LIVENESS)
        # Replicas: only the Lease holder reconciles; a standby answers its probe.
        leadership = Leadership(controller.api, leader_namespace())
        async with standby_probe(liveness):
            if not await leadership.acquire(stop):
                return
        keeper = asyncio.create_task(leadership.keep(stop))
        sweeper = None
        executor = controller.executor
        if isinstance(executor, KubernetesExecutor) and executor.settings.warm_idle_s > 0:
            sweeper = asyncio.create_task(sweep_warm_servers(executor, stop))
        try:
            await run_operator(controller, stop_flag=stop, liveness_endpoint=liveness)
        finally:
            stop.set()
            await keeper
            if sweeper is not None:
                await sweeper
            await asyncio.to_thread(leadership.release)

    asyncio.run(serve())
    return 0


async def sweep_warm_servers(executor: Any, stop: asyncio.Event) -> None:
    """Scale idle warm model servers to zero (KubernetesExecutor.sweep_warm), a few times
    per idle period, while this replica leads."""
    period = min(60.0, max(5.0, executor.settings.warm_idle_s / 4))
    while not stop.is_set():
        try:
            await asyncio.to_thread(executor.sweep_warm)
        except Exception:
            logging.getLogger("dyff.controller").exception("warm server sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=period)


if __name__ == "__main__":
    sys.exit(main())
