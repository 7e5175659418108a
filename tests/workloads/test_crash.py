"""A workload killed with SIGKILL anywhere, then run again, finishes with the same metrics,
one prediction per dataset row, and no server left running.

The workload runs for real: `python -m dyff.workloads.evaluate` in a fresh
interpreter, serving the model's Bento under `bentoml serve`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from dyff import results
from dyff.workloads.evaluate import run_evaluation
from tests.workloads.evaluation_fixtures import (
    LONG,
    LONG_ROWS,
    LONG_SHARD_ROWS,
    Platform,
    fresh_account,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SHARDS = -(-LONG_ROWS // LONG_SHARD_ROWS)
# Small requests, one at a time: a run takes seconds, so a kill lands in the middle.
ORDER = {"dataset": LONG, "batch_size": 4, "concurrency": 1}


@pytest.fixture
def workloads() -> Iterator[list[Any]]:
    """The workload processes a test starts; any still running at its end are killed
    (their servers then go with them, by the workload's reaper)."""
    started: list[Any] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def start(
    started: list[Any], platform: Platform, account: str, name: str, scratch: Path, log: Path
) -> Any:
    config = platform.config(account, name).model_copy(update={"scratch_dir": str(scratch)})
    path = scratch.parent / f"{name}.json"
    path.write_text(config.model_dump_json(by_alias=True))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dyff.workloads.evaluate", "--config", str(path)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # as a container: the kill can take its whole group
        )
    started.append(proc)
    return proc


def wait_until(proc: Any, what: str, cond: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"workload exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def servers_started_by(proc: Any) -> list[psutil.Process]:
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "bentoml" in cmd and "serve" in cmd:
            out.append(child)
    return out


def leftovers(scratch: Path) -> list[psutil.Process]:
    """Live processes serving from this test's scratch space (BENTOML_HOME lies in it);
    BentoML workers inherit the environment, so this finds them too."""
    found = []
    for proc in psutil.process_iter():
        try:
            home = proc.environ().get("BENTOML_HOME", "")
            if home.startswith(str(scratch)) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def assert_no_orphans(scratch: Path, family: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 30
    while leftovers(scratch) or any(p.is_running() and p.status() != "zombie" for p in family):
        assert time.monotonic() < deadline, f"left running: {leftovers(scratch)}"
        time.sleep(0.1)


def same_metrics(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("rows", "labels", "confusionMatrix", "accuracy", "top5Accuracy", "shards"):
        assert a[key] == b[key], key
    for key in ("ece",):
        assert a[key] == pytest.approx(b[key], abs=1e-6)
    assert a["macro"] == pytest.approx(b["macro"])


def test_killed_anywhere_then_rerun_gives_the_same_results(
    platform: Platform, served_tiny: str, tmp_path: Path, workloads: list[Any]
) -> None:
    # The uninterrupted reference, from an account of its own.
    ref_account = fresh_account()
    platform.order(ref_account, "ref", **ORDER)  # type: ignore[arg-type]
    run_evaluation(platform.records, platform.blobs, ref_account, "ref", model_url=served_tiny)
    reference = platform.metrics_doc(ref_account, "ref")

    account = fresh_account()
    platform.order(account, "crash", **ORDER)  # type: ignore[arg-type]
    scratch, log = tmp_path / "scratch", tmp_path / "workload.log"
    scratch.mkdir()

    # 1. Killed while `bentoml serve` starts (only the workload's pid, as the OOM killer does).
    proc = start(workloads, platform, account, "crash", scratch, log)
    wait_until(proc, "the server process", lambda: bool(servers_started_by(proc)))
    family = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert_no_orphans(scratch, family)
    assert platform.prediction_files(account) == []

    # 2. Killed, with its whole process group, once the first shard's predictions exist
    # and are counted in its progress. A shard's file is written just before its progress,
    # so waiting for the file alone made the progress check below race with the kill.
    proc = start(workloads, platform, account, "crash", scratch, log)

    def reported() -> bool:
        progress = platform.evaluation(account, "crash").status.progress
        done = progress is not None and progress.shards_done >= 1
        return done and bool(platform.prediction_files(account))

    wait_until(proc, "a prediction file and its progress", reported)
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert_no_orphans(scratch, family)
    partial = len(platform.prediction_files(account))
    assert 1 <= partial < SHARDS, "the kill should land mid-run"
    st = platform.evaluation(account, "crash").status
    assert st.phase == "Running" and st.progress is not None
    assert 1 <= st.progress.shards_done <= partial

    # 3. Run again to the end.
    proc = start(workloads, platform, account, "crash", scratch, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
    assert_no_orphans(scratch, [])

    st = platform.evaluation(account, "crash").status
    assert st.phase == "Complete" and st.progress is not None
    assert (st.progress.shards_done, st.progress.rows) == (SHARDS, LONG_ROWS)
    assert st.progress.shards_reused == 0  # the shards were this evaluation's own work
    same_metrics(platform.metrics_doc(account, "crash"), reference)

    # Exactly one prediction per dataset row, from whole files, one file per shard.
    files = platform.prediction_files(account)
    assert sorted(files) == sorted(platform.manifest(account, "crash"))
    assert len(files) == SHARDS
    paths = results.local_paths(platform.blobs, files, tmp_path)
    row_ids = results.Results(paths).scan().select("row_id").collect()["row_id"].to_numpy()
    np.testing.assert_array_equal(np.sort(row_ids), np.arange(LONG_ROWS))


def test_perturbed_predictions_are_identical_after_a_kill_and_rerun(
    platform: Platform, served_tiny: str, tmp_path: Path, workloads: list[Any]
) -> None:
    """Robustness criteria: the corrupted images are seeded by row id, so a workload killed
    mid-way through the perturbed shards and run again predicts exactly what an
    uninterrupted run does, byte for byte in the predictions' content."""
    import polars as pl

    from dyff.evaluation import Variant, resolve
    from tests.workloads.evaluation_fixtures import HELDOUT

    criteria = {"perturbations": [{"kind": "gaussian_noise", "severities": [2], "seed": 9}]}
    order = {"dataset": HELDOUT, "batch_size": 4, "concurrency": 1, "criteria": criteria}
    ref_account = fresh_account()
    platform.order(ref_account, "ref", **order)  # type: ignore[arg-type]
    run_evaluation(platform.records, platform.blobs, ref_account, "ref", model_url=served_tiny)

    account = fresh_account()
    platform.order(account, "crash", **order)  # type: ignore[arg-type]
    scratch, log = tmp_path / "scratch", tmp_path / "workload.log"
    scratch.mkdir()
    shards = len(
        resolve(platform.records, platform.blobs, platform.evaluation(account, "crash")).shards
    )
    proc = start(workloads, platform, account, "crash", scratch, log)
    # Killed once the clean shards are done and a perturbed one is written.
    wait_until(
        proc,
        "a perturbed prediction file",
        lambda: len(platform.prediction_files(account)) > shards,
    )
    family = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert_no_orphans(scratch, family)
    assert shards < len(platform.prediction_files(account)) < 2 * shards, "mid-way"

    proc = start(workloads, platform, account, "crash", scratch, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
    assert platform.evaluation(account, "crash").status.phase == "Complete"

    variant = Variant("gaussian_noise", 2, 9)

    def perturbed(acct: str, name: str) -> list[pl.DataFrame]:
        inputs = resolve(platform.records, platform.blobs, platform.evaluation(acct, name))
        keys = [inputs.prediction_key(s, variant) for s in inputs.shards]
        return [pl.read_parquet(platform.blobs.root / k) for k in keys]

    # The same corrupted images, so the same predictions; the scores within float noise
    # (the reference ran against another server process, threaded otherwise).
    for got, want in zip(perturbed(account, "crash"), perturbed(ref_account, "ref"), strict=True):
        exact = [c for c in got.columns if "score" not in c]
        assert got.select(exact).equals(want.select(exact))
        for column in (c for c in got.columns if "score" in c):
            np.testing.assert_allclose(
                np.asarray(got[column].to_list(), dtype=np.float64),
                np.asarray(want[column].to_list(), dtype=np.float64),
                rtol=0, atol=1e-5,
            )  # fmt: skip
    ref_doc, doc = platform.metrics_doc(ref_account, "ref"), platform.metrics_doc(account, "crash")
    assert doc["robustness"] == ref_doc["robustness"]
