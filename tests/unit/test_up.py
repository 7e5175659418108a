"""`dyff up` itself, fast: it starts the API and the controller on a fresh data folder,
writes the client config with a working key, answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from dyff.runtime.serve import free_port


def test_up_serves_with_a_fresh_key_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DYFF_DATA_DIR": str(tmp_path / "data"),
        "DYFF_CONFIG": str(tmp_path / "config.json"),
        "HF_HUB_OFFLINE": "1",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "dyff.cli", "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "dyff up did not answer"
            time.sleep(0.3)
        config = json.loads((tmp_path / "config.json").read_text())
        assert config["server"] == url
        key = {"authorization": f"Bearer {config['apiKey']}"}
        assert httpx.get(f"{url}/v1/models", headers=key).status_code == 200
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert (tmp_path / "data" / "records.db").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    # 130: the shell's code for Ctrl-C (uvicorn re-raises the signal once stopped).
    assert proc.returncode in (0, 130), out
    assert f"dyff is up at {url}" in out and "dyff stopped" in out
