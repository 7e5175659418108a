"""A complete evaluation's results: metrics, predictions (filtered and paged) and the HTML
report."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from pydantic import Field

from api_shim.auth import AccountScope, ScopeDep
from api_shim.params import NameStr
from api_shim.problems import responses
from api_shim.state import AppState, StateDep
from dyff import layout, results
from dyff.errors import Conflict, NotFound
from dyff.lifecycle import EvaluationPhase
from dyff.schema import Dataset, Evaluation, Schema

router = APIRouter(tags=["results"])


class PredictionRows(Schema):
    """Rows of the predictions table matching a query."""

    total: int = Field(description="Rows matching the filters.")
    rows: list[dict[str, Any]] = Field(description="The requested page of rows.")
    labels: list[str] | None = Field(
        default=None,
        description="Class names by id (of `label`, `predicted`, `topk_labels`): the dataset's "
        "labels, then any model label the dataset lacks.",
    )


def complete_evaluation(scope: AccountScope, name: str) -> Evaluation:
    """The caller's (or a public) Complete evaluation that is not being deleted: its
    results may be read. Otherwise 404, or 409 saying what it is."""
    evaluation = scope.readable(Evaluation, name)
    if evaluation.metadata.deletion_timestamp is not None:
        # Its files are going: reading them now could meet half of them.
        raise Conflict(f"evaluation {name!r} is being deleted", field="metadata.deletionTimestamp")
    if evaluation.status.phase != EvaluationPhase.COMPLETE:
        raise Conflict(
            f"evaluation {name!r} is {evaluation.status.phase or 'Pending'}, not Complete",
            field="status.phase",
        )
    return evaluation


@contextlib.contextmanager
def results_gone_is_conflict(name: str) -> Iterator[None]:
    """A result file deleted while it is read (the evaluation was deleted meanwhile) is a
    409 like reading a deleting evaluation, not a server error."""
    try:
        yield
    except (FileNotFoundError, NotFound):
        raise Conflict(
            f"evaluation {name!r} is being deleted", field="metadata.deletionTimestamp"
        ) from None


def evaluation_results(
    state: AppState, scope: AccountScope, name: str
) -> tuple[Evaluation, results.Results]:
    evaluation = complete_evaluation(scope, name)
    with results_gone_is_conflict(name):
        manifest = json.loads(
            state.blobs.get(
                layout.manifest_key(
                    evaluation.account, evaluation.name, evaluation.metadata.uid or ""
                )
            )
        )
        paths = results.local_paths(state.blobs, manifest["files"], state.cache_dir)
    return evaluation, results.Results(paths)


def label_names(state: AppState, evaluation: Evaluation) -> list[str] | None:
    """Names of the label ids in the predictions: the dataset's labels, then the model
    labels the dataset lacks (from metrics.json; the dataset's record for older ones)."""
    key = layout.metrics_key(evaluation.account, evaluation.name, evaluation.metadata.uid or "")
    with contextlib.suppress(NotFound, ValueError):
        doc = json.loads(state.blobs.get(key))
        if isinstance(doc.get("labels"), list):
            return [str(x) for x in doc["labels"] + (doc.get("extraLabels") or [])]
    ref = evaluation.spec.dataset
    dataset = state.records.find(Dataset, ref.account or evaluation.account, ref.name)
    return None if dataset is None else dataset.status.labels


@router.get("/v1/evaluations/{name}/metrics", responses=responses(401, 404, 409, 422))
def get_metrics(name: NameStr, scope: ScopeDep, state: StateDep) -> dict[str, Any]:
    """The full metrics of a complete evaluation."""
    evaluation = complete_evaluation(scope, name)
    key = layout.metrics_key(evaluation.account, name, evaluation.metadata.uid or "")
    with results_gone_is_conflict(name):
        doc: dict[str, Any] = json.loads(state.blobs.get(key))
    return doc


@router.get(
    "/v1/evaluations/{name}/predictions",
    response_model=PredictionRows,
    responses=responses(401, 404, 409, 422),
)
def get_predictions(
    name: NameStr,
    scope: ScopeDep,
    state: StateDep,
    q: Annotated[results.PredictionQuery, Query()],
) -> PredictionRows:
    """Predictions filtered and paged by structured parameters (no SQL)."""
    evaluation, res = evaluation_results(state, scope, name)
    with results_gone_is_conflict(name):
        frame = res.rows(q)
        total = res.count(q)
    return PredictionRows(total=total, rows=frame.to_dicts(), labels=label_names(state, evaluation))


@router.get(
    "/v1/evaluations/{name}/report",
    response_class=HTMLResponse,
    responses=responses(401, 404, 409, 422),
)
def get_report(name: NameStr, scope: ScopeDep, state: StateDep) -> HTMLResponse:
    """A self-contained HTML report of a complete evaluation: metrics, confusion matrix,
    per-class scores, reliability diagram and the most confident errors."""
    from dyff.report import build_report

    complete_evaluation(scope, name)  # 404 for other accounts' evaluations
    with results_gone_is_conflict(name):
        page = build_report(state.records, state.blobs, scope.account, name, state.cache_dir)
    return HTMLResponse(page)
