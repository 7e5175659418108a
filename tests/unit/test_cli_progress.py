"""`dyff evaluations get NAME` says, by criterion, what was reused and what computed."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from dyff.schema import CriterionProgress, Progress


class FakeClient:
    def __init__(self, entity: dict[str, Any]) -> None:
        self.entity = entity

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def get(self, plural: str, name: str) -> dict[str, Any]:
        assert (plural, name) == ("evaluations", "e")
        return self.entity


def get_evaluation(
    progress: Progress, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> list[list[str]]:
    from dyff import cli

    entity = {
        "metadata": {"name": "e"},
        "spec": {"model": {"name": "m"}, "dataset": {"name": "d"}},
        "status": {"phase": "Running", "progress": progress.wire()},
    }
    monkeypatch.setattr(cli, "client", lambda: FakeClient(entity))
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setattr(sys, "argv", ["dyff", "evaluations", "get", "e"])
    capsys.readouterr()
    try:
        cli.main()
    except SystemExit as exc:
        assert not exc.code
    return [line.split() for line in capsys.readouterr().out.splitlines()]


def test_progress_by_criterion(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    by = [
        CriterionProgress(
            criterion="predictions", shards_total=10, shards_reused=10, shards_done=10
        ),
        CriterionProgress(
            criterion="perturbation jpeg/5", shards_total=10, shards_reused=0, shards_done=4
        ),
    ]
    progress = Progress(shards_total=20, shards_reused=10, shards_done=14, by_criterion=by)
    lines = get_evaluation(progress, monkeypatch, capsys)
    assert ["e", "m", "d", "Running", "14/20", "(10", "reused)"] in lines
    assert ["CRITERION", "SHARDS", "REUSED", "COMPUTED", "DONE"] in lines
    assert ["predictions", "10", "10", "0", "10"] in lines
    assert ["perturbation", "jpeg/5", "10", "0", "4", "4"] in lines


def test_no_breakdown_without_perturbations(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = get_evaluation(Progress(shards_total=3, shards_done=3), monkeypatch, capsys)
    assert not any(line and line[0] == "CRITERION" for line in lines)
