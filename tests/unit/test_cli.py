"""`dyff admin bootstrap` creates the first account and key once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dyff import accounts
from dyff.stores.sqlite import SqliteRecordStore


def test_bootstrap_prints_a_working_admin_key_once(tmp_path: Path) -> None:
    env = {"DYFF_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "dyff.cli", "admin", "bootstrap", "--account", "root"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    token = first.stdout.strip()
    caller = accounts.authenticate(SqliteRecordStore(tmp_path / "records.db"), token)
    assert caller.account == "root" and caller.admin
    second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert second.returncode == 2
    assert "already exists" in second.stderr and "Traceback" not in second.stderr
