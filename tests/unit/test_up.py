"""`dyff up` itself, fast: it starts the API and the controller on a fresh data folder,
writes the client config with a working key, answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx

from tests.attack.conftest import start_up, stop_up


def test_up_serves_with_a_fresh_key_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    up = start_up(tmp_path)
    try:
        config = json.loads((tmp_path / "config.json").read_text())
        assert config["server"] == up.url and config["apiKey"] == up.key
        assert httpx.get(f"{up.url}/v1/models").status_code == 401
        with up.client() as c:
            assert c.get("/v1/models").status_code == 200
        assert (up.data_dir / "records.db").is_file()
    finally:
        code = stop_up(up, signal.SIGINT)
    out = up.log_text()
    # 130: the shell's code for Ctrl-C, were uvicorn's re-raised signal to end the process.
    assert code in (0, 130), out
    assert f"dyff is up at {up.url}" in out and "dyff stopped" in out
