"""Warm model servers (controller/executors/warm.py) with the real evaluate workload and a
real `bentoml serve`: reuse, idle expiry, the LRU bound, stopping on model delete, and the
timings an evaluation writes in its status."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from controller.executors.guard import leftovers
from controller.executors.local import LocalExecutor
from controller.executors.warm import WarmPool
from dyff.runtime.serve import WARM_POOL_ENV
from dyff.workloads.evaluate import RunReport, run_evaluation
from tests.workloads.evaluation_fixtures import (
    HELDOUT,
    HELDOUT_PLUS,
    MODEL,
    OWNER,
    Platform,
    fresh_account,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def executor(
    tmp_path: Path, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalExecutor]:
    """A LocalExecutor whose warm pool (max 1 idle server) the in-process workload uses."""
    ex = LocalExecutor(platform.records_url, platform.blobs.url, tmp_path / "work")
    ex.warm = WarmPool(ex.work_dir / "warm", idle_s=300, max_idle=1)
    ex.warm.start()
    assert ex.warm.socket_path is not None
    monkeypatch.setenv(WARM_POOL_ENV, str(ex.warm.socket_path))
    yield ex
    left = ex.warm.pids()
    ex.close()
    assert not any(_running(p) for p in left), "close() left a warm server"
    assert not leftovers(ex.work_dir), "a warm server's worker outlived the pool"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _gone(pids: list[int], within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while any(_running(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _evaluate(platform: Platform, account: str, name: str, **order: object) -> RunReport:
    platform.order(account, name, model_owner=OWNER, dataset_owner=OWNER, **order)  # type: ignore[arg-type]
    report = run_evaluation(platform.records, platform.blobs, account, name)
    assert report is not None
    assert platform.evaluation(account, name).status.phase == "Complete"
    return report


def test_second_evaluation_uses_the_warm_server_and_timings_are_written(
    platform: Platform, executor: LocalExecutor
) -> None:
    pool = executor.warm
    account = fresh_account()
    first = _evaluate(platform, account, "first", dataset=HELDOUT)
    assert pool.starts == 1 and first.inference_calls > 0
    [pid] = pool.pids()
    cold = platform.evaluation(account, "first").status.timings
    assert cold is not None
    assert 0.5 < cold.model_start_s < 300, cold  # bentoml serve's start
    assert 0 < cold.inference_s < 120 and 0 < cold.metrics_s < 60, cold
    assert 0 <= cold.queued_s < 3600, cold

    # Other rows of the same model: no new server, predictions inferred by the warm one.
    other = fresh_account()
    ordered = time.time()
    second = _evaluate(platform, other, "second", dataset=HELDOUT_PLUS)
    order_to_complete = time.time() - ordered
    assert second.inference_calls > 0
    assert pool.starts == 1 and pool.pids() == [pid]
    warm = platform.evaluation(other, "second").status.timings
    assert warm is not None and warm.model_start_s == 0 and warm.inference_s > 0, warm
    # Queued is part of the order's time, measured to the microsecond (not from a whole
    # second before the order).
    assert 0 <= warm.queued_s <= order_to_complete, (warm, order_to_complete)
    # The reuse key does not depend on where the server came from.
    first_doc, second_doc = platform.metrics_doc(account, "first"), second.metrics or {}
    assert first_doc["inferenceDigest"] == second_doc["inferenceDigest"]


def test_idle_expiry_stops_the_server(platform: Platform, executor: LocalExecutor) -> None:
    pool = executor.warm
    _evaluate(platform, fresh_account(), "ev", dataset=HELDOUT)
    pids = pool.pids()
    assert len(pids) == 1 and _running(pids[0])
    assert pool.expire() == 0  # just used: still warm
    pool.idle_s = 0.5
    assert _gone(pids), "an idle server outlived its idle period"
    assert pool.servers() == []


def test_lru_bound_and_model_delete(platform: Platform, executor: LocalExecutor) -> None:
    pool = executor.warm  # at most one idle server
    _evaluate(platform, fresh_account(), "k5", dataset=HELDOUT, top_k=5)
    [first] = pool.pids()
    # Another serving setting (top-k) is another server; the older one is stopped.
    _evaluate(platform, fresh_account(), "k3", dataset=HELDOUT, top_k=3)
    assert pool.starts == 2
    assert _gone([first]), "the least recently used server was not stopped"
    [second] = pool.pids()
    # Deleting the model (the controller stops its work) stops its servers.
    executor.stop(("Model", OWNER, MODEL))
    assert _gone([second]) and pool.servers() == []


def test_a_warm_server_that_dies_is_seen_at_once_and_replaced(
    platform: Platform, executor: LocalExecutor, tiny_bento: Path
) -> None:
    """What the workload watches while it waits for answers (`Served.exited`, polled every
    LIVENESS_INTERVAL_S) says at once that a leased server died; the next lease starts a
    new one."""
    from dyff.runtime.serve import lease_warm

    pool = executor.warm
    assert pool.socket_path is not None
    request = {
        "account": OWNER, "model": MODEL, "digest": "sha256:test", "bento": str(tiny_bento),
        "knobs": {"DYFF_TOP_K": 5, "DYFF_TORCH_THREADS": 1}, "userCode": False, "env": {},
    }  # fmt: skip
    with lease_warm(str(pool.socket_path), request, 300) as leased:
        assert leased.started and leased.exit_message() is None
        psutil.Process(leased.pid).kill()
        deadline = time.monotonic() + 2
        while leased.exit_message() is None:
            assert time.monotonic() < deadline, "a dead warm server went unnoticed"
            time.sleep(0.05)
        assert "the model server exited" in (leased.exit_message() or "")
    with lease_warm(str(pool.socket_path), request, 300) as again:
        assert again.started and again.pid != leased.pid and again.exit_message() is None
    assert pool.starts == 2


def test_a_cold_evaluation_runs_the_model_in_process_then_the_server_is_warm(
    platform: Platform, executor: LocalExecutor
) -> None:
    """`dyff up`'s cold path: no warm server, so dyff's own model runs in the workload
    (dyff.runtime.in_process), and the pool is asked to start the server for later (a
    `prestart`); the next evaluation `peek`s and finds it warm. Both give the very same
    predictions: the same service code on the same batches, with the same threads."""
    import polars as pl

    from dyff.workloads.evaluate import ServerOptions

    pool = executor.warm
    options = ServerOptions(in_process=True)
    account = fresh_account()
    platform.order(account, "cold", dataset=HELDOUT, model_owner=OWNER, dataset_owner=OWNER)
    cold = run_evaluation(platform.records, platform.blobs, account, "cold", server=options)
    assert cold is not None and cold.inference_calls > 0
    timings = platform.evaluation(account, "cold").status.timings
    assert timings is not None and 0 < timings.model_start_s < 30, timings  # a load, no serve
    deadline = time.monotonic() + 120
    while not pool.servers():  # started in the background, for the next evaluation
        assert time.monotonic() < deadline, "the pool did not prestart the server"
        time.sleep(0.2)
    assert pool.starts == 1

    other = fresh_account()
    platform.order(other, "warm", dataset=HELDOUT, model_owner=OWNER, dataset_owner=OWNER)
    warm = run_evaluation(platform.records, platform.blobs, other, "warm", server=options)
    assert warm is not None and warm.inference_calls == cold.inference_calls
    timings = platform.evaluation(other, "warm").status.timings
    assert timings is not None and timings.model_start_s == 0, timings
    assert pool.starts == 1

    def frames(acct: str, name: str) -> list[pl.DataFrame]:
        return [pl.read_parquet(platform.blobs.root / k) for k in platform.manifest(acct, name)]

    for in_process, served in zip(frames(account, "cold"), frames(other, "warm"), strict=True):
        assert in_process.equals(served)


def test_peek_leases_only_a_running_server(
    executor: LocalExecutor, tiny_bento: Path, tmp_path: Path
) -> None:
    import shutil

    from dyff.runtime.serve import WarmUnavailable, lease_warm, prestart_warm

    pool = executor.warm
    assert pool.socket_path is not None
    path = str(pool.socket_path)
    # The workload's own download, gone with its scratch as soon as it exits.
    download = tmp_path / "scratch" / "model.bento"
    download.parent.mkdir()
    shutil.copyfile(tiny_bento, download)
    request = {
        "account": OWNER, "model": MODEL, "digest": "sha256:peek", "bento": str(download),
        "knobs": {"DYFF_TOP_K": 5, "DYFF_TORCH_THREADS": 1}, "userCode": False, "env": {},
    }  # fmt: skip
    peek = {**request, "mode": "peek"}
    with pytest.raises(WarmUnavailable, match="no warm server"), lease_warm(path, peek, 300):
        pass
    assert pool.starts == 0 and pool.servers() == []
    assert prestart_warm(path, request)  # answered at once; the start goes on
    shutil.rmtree(download.parent)  # the workload exited: the pool took its own copy
    deadline = time.monotonic() + 120
    while not pool.servers():
        assert time.monotonic() < deadline, "prestart started nothing"
        time.sleep(0.2)
    with lease_warm(path, {**request, "mode": "peek"}, 300) as leased:
        assert not leased.started and pool.starts == 1


def test_a_prestart_ended_by_shutdown_is_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dyff up` stopping while a prestarted server starts ends that start: nothing went
    wrong, so no warning and no traceback reach the user (`make demo` showed one)."""
    import io

    pool = WarmPool(tmp_path / "pool", idle_s=60)
    bento = tmp_path / "model.bento"
    bento.write_bytes(b"bento")

    def ended(request: object) -> object:
        pool._closing.set()  # close() began while the server was starting
        raise RuntimeError("bentoml serve exited with -9 before it was ready")

    monkeypatch.setattr(pool, "acquire", ended)
    with caplog.at_level("INFO", logger="dyff"):
        request = {"bento": str(bento), "account": "acme", "model": "m", "digest": "d" * 64}
        pool._prestart(request, io.BytesIO())
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    assert "ended by shutdown" in caplog.text
    pool.close()
