"""Leader election between controller replicas (controller/leader.py) against the
emulated API server: one holder at a time, renewal, take-over of a Lease that was not
renewed in time, a release that hands over at once, a deposed leader that stops."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable

import httpx

from controller.kube import KubeApi
from controller.leader import Leadership, standby_probe
from tests.controller.conftest import create_namespace
from tests.controller.kmock_cluster import Cluster

T0 = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


def replica(cluster: Cluster, name: str, clock: Callable[[], datetime.datetime]) -> Leadership:
    return Leadership(KubeApi(host=cluster.api_url), "dyff-system", identity=name, clock=clock)


async def test_one_holder_at_a_time_and_take_over_after_the_lease_lapses(
    cluster: Cluster,
) -> None:
    await create_namespace(cluster, "dyff-system")
    clock = Clock()
    a, b = replica(cluster, "a", clock), replica(cluster, "b", clock)
    assert await asyncio.to_thread(a.try_acquire)
    assert not await asyncio.to_thread(b.try_acquire)
    clock.advance(20)
    assert await asyncio.to_thread(a.try_acquire)  # a renews
    clock.advance(20)
    assert not await asyncio.to_thread(b.try_acquire)  # renewed 20 s ago: still a's
    clock.advance(15)
    assert await asyncio.to_thread(b.try_acquire)  # not renewed for 35 s > 30 s
    assert not await asyncio.to_thread(a.try_acquire)
    lease = cluster.read("coordination.k8s.io/v1/leases", "dyff-system", "dyff-controller")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1


async def test_a_release_hands_over_at_once(cluster: Cluster) -> None:
    await create_namespace(cluster, "dyff-system")
    clock = Clock()
    a, b = replica(cluster, "a", clock), replica(cluster, "b", clock)
    assert await asyncio.to_thread(a.try_acquire)
    await asyncio.to_thread(a.release)
    clock.advance(2)
    assert await asyncio.to_thread(b.try_acquire)


async def test_a_write_from_a_stale_read_loses(cluster: Cluster) -> None:
    """Two replicas that both saw the lapsed Lease: only the first update wins."""
    await create_namespace(cluster, "dyff-system")
    clock = Clock()
    a, b = replica(cluster, "a", clock), replica(cluster, "b", clock)
    assert await asyncio.to_thread(a.try_acquire)
    clock.advance(60)
    api = KubeApi(host=cluster.api_url)
    stale = await asyncio.to_thread(api.get, a.path)
    assert await asyncio.to_thread(b.try_acquire)
    body = {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]}}
    body["spec"] = {"holderIdentity": "c"}
    try:
        await asyncio.to_thread(api.merge_patch, a.path, body)
        raise AssertionError("a stale write was accepted")
    except Exception as exc:  # ApiError 409
        assert getattr(exc, "status", None) == 409


async def test_a_leader_that_loses_its_lease_stops(cluster: Cluster) -> None:
    await create_namespace(cluster, "dyff-system")
    clock = Clock()
    a = Leadership(
        KubeApi(host=cluster.api_url), "dyff-system", identity="a", clock=clock, renew_s=0.05
    )
    b = replica(cluster, "b", clock)
    stop = asyncio.Event()
    assert await a.acquire(stop)
    clock.advance(60)  # a stalled past its Lease (the clock jumps), and b took it over
    assert await asyncio.to_thread(b.try_acquire)
    keeper = asyncio.create_task(a.keep(stop))
    await asyncio.wait_for(keeper, 5)  # a's next renewal finds b's fresh Lease: a stops
    assert stop.is_set()


async def test_a_standby_answers_its_liveness_probe() -> None:
    from dyff.runtime.serve import free_port as port_of

    port = port_of()
    async with standby_probe(f"http://127.0.0.1:{port}/healthz"), httpx.AsyncClient() as client:
        r = await client.get(f"http://127.0.0.1:{port}/healthz")
    assert r.status_code == 200
