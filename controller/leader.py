"""One active controller among replicas: a Lease (coordination.k8s.io/v1) held by the
leader, as client-go's leader election does it.

A replica waits until the Lease is free (no holder, or not renewed for its duration),
takes it with a patch conditioned on the resourceVersion it read (so two replicas
never both win), and renews it every `renew_s`. It runs kopf and the record sync only
while it holds the Lease; one that cannot renew in time stops at once (the Deployment
restarts it as a standby), before another may take over. kopf itself runs standalone:
the Lease is what keeps two replicas from reconciling at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from controller.kube import ApiError, KubeApi

log = logging.getLogger("dyff.controller.leader")

LEASE_NAME = "dyff-controller"
LEASE_S = 30
RENEW_S = 10


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _time(value: datetime.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # MicroTime


def _parse(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


class Leadership:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        *,
        identity: str | None = None,
        lease_s: int = LEASE_S,
        renew_s: float = RENEW_S,
        clock: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        self.api, self.namespace = api, namespace
        self.identity = identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.lease_s, self.renew_s, self.clock = lease_s, renew_s, clock
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE_NAME}"

    def try_acquire(self) -> bool:
        """Take or renew the Lease if it is ours or free; False while another holds it."""
        now = self.clock()
        current = self.api.find(self.path)
        if current is None:
            try:
                self.api.create(self.path.rsplit("/", 1)[0], self._lease(now, now, 0))
                return True
            except ApiError as exc:
                if exc.status == 409:  # another replica created it first
                    return False
                raise
        spec = current.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
        duration = datetime.timedelta(seconds=spec.get("leaseDurationSeconds") or self.lease_s)
        ours = holder == self.identity
        if not ours and holder and renewed is not None and now < renewed + duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        acquired = _parse(spec.get("acquireTime")) if ours else now
        body = self._lease(acquired or now, now, transitions)
        # The resourceVersion read above: if anyone wrote since, this patch fails (409),
        # as the API server takes a resourceVersion in a patch as a precondition.
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            self.api.merge_patch(self.path, body)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _lease(
        self, acquired: datetime.datetime, renewed: datetime.datetime, transitions: int
    ) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_s,
                "acquireTime": _time(acquired),
                "renewTime": _time(renewed),
                "leaseTransitions": transitions,
            },
        }

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads (True), or until `stop` (False)."""
        while not stop.is_set():
            try:
                if await asyncio.to_thread(self.try_acquire):
                    log.info("leading as %s", self.identity)
                    return True
            except ApiError as exc:
                log.warning("cannot read the lease: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.renew_s)
        return False

    def release(self) -> None:
        """Give the Lease up on a clean stop, so a standby takes over at once."""
        current = self.api.find(self.path)
        if current is None or (current.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        body = self._lease(
            self.clock(), self.clock(), int(current["spec"].get("leaseTransitions") or 0)
        )
        body["spec"].update(holderIdentity="", leaseDurationSeconds=1)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        with contextlib.suppress(ApiError):
            self.api.merge_patch(self.path, body)

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew until `stop`; set `stop` when the Lease cannot be kept (lost to another,
        or not renewed for most of its duration): a leader that may be deposed stops."""
        last = self.clock()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.renew_s)
            if stop.is_set():
                return
            try:
                if await asyncio.to_thread(self.try_acquire):
                    last = self.clock()
                    continue
                log.error("the lease went to another replica: stopping")
            except ApiError as exc:
                log.warning("renewing the lease failed: %s", exc)
                if (self.clock() - last).total_seconds() < self.lease_s - self.renew_s:
                    continue
                log.error("the lease could not be renewed in time: stopping")
            stop.set()


def namespace() -> str:
    """The controller's own namespace (the Deployment sets DYFF_NAMESPACE)."""
    return os.environ.get("DYFF_NAMESPACE") or "dyff-system"


@contextlib.asynccontextmanager
async def standby_probe(endpoint: str) -> AsyncIterator[None]:
    """While a replica waits for the Lease, its liveness endpoint (kopf's, once it
    leads) answers 200, so the kubelet does not restart a healthy standby."""
    from aiohttp import web

    url = urllib.parse.urlsplit(endpoint)

    async def healthy(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get(url.path or "/healthz", healthy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, url.hostname, url.port)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()
