"""The command line: `dyff admin bootstrap`, and the client commands against a served shim."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dyff import accounts, layout
from dyff.errors import DyffError
from dyff.schema import Dataset, Evaluation, Model
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


# ------------------------------------------- the CLI against a served shim


@dataclass
class Served:
    url: str
    records: Any
    blobs: Any
    token: str
    account: str


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The shim over SQLite and a folder, on loopback, and an account's key."""
    from api_shim.app import create_app
    from dyff.stores.file import FileBlobStore
    from tests.shim.conftest import serve

    records = SqliteRecordStore(tmp_path / "records.db")
    blobs = FileBlobStore(tmp_path / "blobs")
    accounts.bootstrap(records, "admin")
    accounts.create_account(records, "acme", None)
    token, _ = accounts.mint_key(records, "acme")
    with serve(create_app(records, blobs, cache_dir=tmp_path / "cache")) as url:
        yield Served(url, records, blobs, token, "acme")


def run_cli(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """`dyff ARGS` in this process, as `main` runs it: (exit status, stdout, stderr)."""
    from dyff import cli

    monkeypatch.setenv("DYFF_SERVER", served.url)
    monkeypatch.setenv("DYFF_API_KEY", served.token)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys, "argv", ["dyff", *args])
    capsys.readouterr()
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def post(served: Served, path: str, body: dict[str, Any]) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {served.token}"}
    with httpx.Client(base_url=served.url, headers=auth) as c:
        r = c.post(path, json=body)
        assert r.status_code in (200, 201), r.text
        doc: dict[str, Any] = r.json()
        return doc


def source(form: str) -> dict[str, Any]:
    return {"form": form, "upload": {"sha256": "a" * 64, "sizeBytes": 1}}


def test_lists_show_whole_names(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    model = "m-" + "a" * 57 + "-end"
    dataset = "d-" + "b" * 57 + "-end"
    evaluation = "e-" + "c" * 57 + "-end"
    post(served, "/v1/models", {"name": model, "spec": {"source": source("transformers")}})
    post(served, "/v1/datasets", {"name": dataset, "spec": {"source": source("parquet")}})
    spec = {"model": {"name": model}, "dataset": {"name": dataset}}
    post(served, "/v1/evaluations", {"name": evaluation, "spec": spec})
    for plural, names in (
        ("evaluations", [evaluation, model, dataset]),
        ("models", [model]),
        ("datasets", [dataset]),
    ):
        code, out, _ = run_cli(served, monkeypatch, capsys, plural, "list")
        assert code == 0
        for name in names:
            assert name in out, out  # whole, on one line
        assert "…" not in out


def test_label_ids_prefer_names_then_ids() -> None:
    from dyff.cli import label_ids, label_text

    names = ["cat", "dog", "3", "bird"]
    assert label_ids(["dog", "0", "3"], names, "--label") == [1, 0, 2]  # "3" names id 2
    assert label_ids(["2"], names, "--label") == [2]
    assert label_ids(None, names, "--label") is None
    with pytest.raises(DyffError, match="neither a label name nor an id"):
        label_ids(["cow"], names, "--label")
    assert label_text(1, names) == "dog (1)" and label_text(2, names) == "3 (2)"
    assert label_text(7, names) == "7"


def test_predictions_show_and_take_label_names(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.shim.conftest import Shim
    from tests.shim.test_api import complete_with_results

    post(served, "/v1/models", {"name": "m", "spec": {"source": source("transformers")}})
    post(served, "/v1/datasets", {"name": "d", "spec": {"source": source("parquet")}})
    spec = {"model": {"name": "m"}, "dataset": {"name": "d"}}
    post(served, "/v1/evaluations", {"name": "e", "spec": spec})
    shim = Shim(served.url, served.records, served.blobs, "")
    complete_with_results(shim, served.account, "e")  # labels i % 5, predicted (7 i) % 5
    uid = served.records.get(Evaluation, served.account, "e").metadata.uid or ""
    names = ["zero", "one", "two", "three", "four"]
    metrics = {"labels": names, "accuracy": 0.2}
    served.blobs.put(layout.metrics_key(served.account, "e", uid), json.dumps(metrics).encode())
    code, out, err = run_cli(
        served, monkeypatch, capsys, "predictions", "e", "--label", "three", "--limit", "50"
    )
    assert code == 0, err
    assert "10 of 10 rows" in out
    rows = [line.split() for line in out.splitlines() if "(" in line and "rows" not in line]
    assert len(rows) == 10 and all(r[1:3] == ["three", "(3)"] for r in rows)
    code, out_by_id, _ = run_cli(
        served, monkeypatch, capsys, "predictions", "e", "--label", "3", "--limit", "50"
    )
    assert code == 0 and out_by_id == out
    code, _, err = run_cli(served, monkeypatch, capsys, "predictions", "e", "--label", "six")
    assert code == 2 and "neither a label name nor an id" in err


def _report_later(served: Served, kind: Any, name: str, phase: str, reason: str, msg: str) -> None:
    """As the controller would: once the record exists, set its outcome."""

    def run() -> None:
        deadline = time.monotonic() + 30
        while served.records.find(kind, served.account, name) is None:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        time.sleep(0.3)

        def report(entity: Any) -> None:
            entity.status.phase = phase
            entity.status.message = msg
            ready = "True" if phase == "Ready" else "False"
            entity.status.set_condition("Ready", ready, reason, msg, entity.metadata.generation)

        served.records.mutate(kind, served.account, name, report)

    threading.Thread(target=run, daemon=True).start()


def test_create_wait_until_ready(
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    data = tmp_path / "test.parquet"
    data.write_bytes(b"not really parquet")
    _report_later(served, Dataset, "d", "Ready", "Ready", "100 rows")
    code, out, err = run_cli(
        served, monkeypatch, capsys, "datasets", "create", "d", "--upload", str(data), "--wait"
    )
    assert code == 0, err
    assert "Ready" in out and "100 rows" in out


def test_create_wait_fails_with_the_reason(
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    message = "config.json has no id2label: the model's class labels are required"
    _report_later(served, Model, "m", "Failed", "MissingLabels", message)
    code, _, err = run_cli(
        served, monkeypatch, capsys, "models", "create", "m", "--upload", str(folder), "--wait"
    )
    assert code != 0, err
    flat = " ".join(err.split())
    assert "MissingLabels" in flat and "has no id2label" in flat


def test_create_an_image_form_model(
    served: Served, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = "registry.example/team/classifier@sha256:" + "ab" * 32
    code, _, err = run_cli(
        served, monkeypatch, capsys, "models", "create", "img", "--image", reference,
        "--port", "8080",
    )  # fmt: skip
    assert code == 0, err
    model = served.records.get(Model, served.account, "img")
    source = model.spec.source
    assert source.form == "image" and source.image is not None
    assert (source.image.reference, source.image.port) == (reference, 8080)
    assert source.upload is None


def test_create_a_model_needs_one_source(
    served: Served,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    code, _, err = run_cli(served, monkeypatch, capsys, "models", "create", "none")
    assert code != 0 and "exactly one of --upload and --image" in " ".join(err.split())
    code, _, err = run_cli(
        served, monkeypatch, capsys, "models", "create", "both", "--upload", str(tmp_path),
        "--image", "reg.example/m@sha256:" + "0" * 64,
    )  # fmt: skip
    assert code != 0 and "exactly one of --upload and --image" in " ".join(err.split())
    code, _, err = run_cli(
        served, monkeypatch, capsys, "models", "create", "tagged", "--image", "reg.example/m:v1"
    )
    assert code != 0 and "pinned by digest" in " ".join(err.split())
    assert served.records.find(Model, served.account, "tagged") is None
