"""`make demo` as a newcomer runs it, twice; then the CLI against `dyff up` over its data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from dyff.emulators import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_demo(data: Path) -> str:
    env = {**os.environ, "DYFF_DEMO_DIR": str(data)}
    done = subprocess.run(
        [sys.executable, "hack/demo.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def dyff(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dyff.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def left_running(data: Path) -> list[str]:
    """Processes started for the demo (dyff up, workloads, bentoml) still running; the
    session's emulators are children of this process too, so match on the demo's data."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            mentions = str(data) in " ".join(proc.cmdline()) or any(
                str(data) in value for value in proc.environ().values()
            )
            if mentions and proc.is_running():
                out.append(" ".join(proc.cmdline()[:4]))
        except psutil.Error:
            continue
    return out


def test_make_demo_twice_then_the_cli(tmp_path: Path) -> None:
    first = run_demo(tmp_path)
    accuracy = float(re.search(r"accuracy: ([0-9.]+)", first).group(1))  # type: ignore[union-attr]
    assert accuracy >= 0.9, first
    report = Path(re.search(r"report: (\S+)", first).group(1))  # type: ignore[union-attr]
    assert report.exists() and 'id="confusion-matrix"' in report.read_text()
    assert "inferred 5 of 5 shards (0 reused)" in first

    second = run_demo(tmp_path)
    assert "is there already: reusing it" in second
    assert "reused everything: all 5 shards came from earlier runs, 0 inferred" in second
    assert not left_running(tmp_path), "the demo left processes running"

    # The CLI against dyff up over the same data.
    port = free_port()
    env = {
        **os.environ,
        "DYFF_DATA_DIR": str(tmp_path / "data"),
        "DYFF_CONFIG": str(tmp_path / "cli.json"),
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "dyff.cli", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "dyff up did not start"
                time.sleep(0.2)
        listed = json.loads(dyff(env, "--json", "evaluations", "list").stdout)
        assert {e["metadata"]["name"] for e in listed} == {"digits-run-1", "digits-run-2"}
        table = dyff(env, "evaluations", "list").stdout
        assert "digits-run-1" in table and "Complete" in table
        wrong = json.loads(
            dyff(env, "--json", "predictions", "digits-run-1", "--wrong", "--limit", "5").stdout
        )
        assert wrong["total"] == round((1 - accuracy) * 450) and len(wrong["rows"]) == 5
        assert all(not r["correct"] for r in wrong["rows"])
        out = tmp_path / "r.html"
        assert dyff(env, "report", "digits-run-1", "-o", str(out)).returncode == 0
        assert "<svg" in out.read_text()
        yaml_file = tmp_path / "eval.yaml"
        yaml_file.write_text(
            "apiVersion: dyff.io/v1alpha1\nkind: Evaluation\nmetadata:\n  name: from-yaml\n"
            "spec:\n  model: {name: digits-vit}\n  dataset: {name: digits-test}\n"
        )
        applied = dyff(env, "apply", "-f", str(yaml_file))
        assert "evaluation/from-yaml created" in applied.stdout, applied.stderr
        again = dyff(env, "apply", "-f", str(yaml_file))
        assert "evaluation/from-yaml unchanged" in again.stdout
        missing = dyff(env, "metrics", "nope")
        assert missing.returncode == 1 and "404" in missing.stderr
        assert "Traceback" not in missing.stderr
    finally:
        os.killpg(up.pid, signal.SIGINT)
        up.wait(60)
