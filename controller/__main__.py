"""`python -m controller run`: the kopf controller of the Deployment (config/base).

kopf runs standalone (one replica, no peering) and cluster-wide (accounts are
namespaces), with its liveness endpoint on 0.0.0.0:8080/healthz (DYFF_LIVENESS_ENDPOINT
overrides it). Stores and executor come from DYFF_* variables (see Controller.from_env).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

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
    from dyff.errors import ConfigError

    try:
        controller = Controller.from_env()
    except (ConfigError, ValueError) as exc:
        print(f"dyff controller: {exc}", file=sys.stderr)
        return 2
    except ConfigException as exc:  # neither in a Pod nor with a kubeconfig
        print(f"dyff controller: no Kubernetes API to talk to: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_operator(
            controller,
            stop_flag=stop,
            liveness_endpoint=os.environ.get("DYFF_LIVENESS_ENDPOINT", LIVENESS),
        )

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
