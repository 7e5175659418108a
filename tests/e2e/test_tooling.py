"""The kind tooling says what is missing: hack/kind-up.sh.

Fast and without docker: fake tools on a private PATH stand in for the real ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KIND_UP = ROOT / "hack" / "kind-up.sh"


def fake_bin(tmp_path: Path, tools: dict[str, int]) -> Path:
    """A bin folder with bash, dirname and grep, plus fake tools exiting with a code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for real in ("bash", "dirname", "grep"):
        exe = shutil.which(real)
        assert exe, real
        (bin_dir / real).symlink_to(exe)
    for tool, code in tools.items():
        path = bin_dir / tool
        path.write_text(f"#!{shutil.which('bash')}\nexit {code}\n")
        path.chmod(0o755)
    return bin_dir


def kind_up(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "bash"), str(KIND_UP)],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_kind_up_names_every_missing_tool(tmp_path: Path) -> None:
    proc = kind_up(fake_bin(tmp_path, {}))
    assert proc.returncode == 1
    assert "missing on PATH: docker kind kubectl" in proc.stderr


def test_kind_up_says_when_the_docker_engine_is_down(tmp_path: Path) -> None:
    proc = kind_up(fake_bin(tmp_path, {"docker": 1, "kind": 0, "kubectl": 0}))
    assert proc.returncode == 1
    assert "no Docker engine answers" in proc.stderr
    assert "missing on PATH" not in proc.stderr


def test_kind_up_is_executable() -> None:
    assert os.access(KIND_UP, os.X_OK)
