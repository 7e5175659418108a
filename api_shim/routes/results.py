"""A complete evaluation's results: metrics, predictions (filtered and paged) and the HTML
report."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from pydantic import Field

from api_shim.auth import AccountScope, ScopeDep
from api_shim.params import NameStr
from api_shim.problems import responses
from api_shim.state import AppState, StateDep
from dyff import criteria, layout, results
from dyff.errors import Conflict, Invalid, NotFound
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
    state: AppState, scope: AccountScope, name: str, q: results.PredictionQuery
) -> tuple[Evaluation, results.Results]:
    """The evaluation's prediction files the query reads: the dataset's own images', or
    a perturbation's (`q.perturbation`); with `q.slice`, its dataset's attribute files."""
    evaluation = complete_evaluation(scope, name)
    with results_gone_is_conflict(name):
        manifest = json.loads(
            state.blobs.get(
                layout.manifest_key(
                    evaluation.account, evaluation.name, evaluation.metadata.uid or ""
                )
            )
        )
        files = manifest["files"]
        if q.perturbation is not None:
            files = perturbed_files(manifest, q.perturbation)
        paths = results.local_paths(state.blobs, files, state.cache_dir)
        attributes = attribute_paths(state, evaluation) if q.slice else None
    return evaluation, results.Results(paths, attributes)


def perturbed_files(manifest: dict[str, Any], perturbation: str) -> list[str]:
    """The prediction files of one perturbation and severity (422 if it was not asked)."""
    kind, severity = results.perturbation_of(perturbation)
    for part in manifest.get("perturbed") or []:
        if (part.get("kind"), part.get("severity")) == (kind, severity):
            return [str(f) for f in part.get("files") or []]
    asked = [f"{p.get('kind')}/{p.get('severity')}" for p in manifest.get("perturbed") or []]
    raise Invalid(
        f"perturbation: this evaluation has no {perturbation} (it has: "
        f"{', '.join(asked) or 'no perturbations'})",
        field="query.perturbation",
    )


def attribute_paths(state: AppState, evaluation: Evaluation) -> list[Path] | None:
    """The dataset's attribute files, in shard order (None where a shard has none)."""
    ref = evaluation.spec.dataset
    dataset = state.records.find(Dataset, ref.account or evaluation.account, ref.name)
    keys = None if dataset is None else criteria.attribute_keys(state.blobs, dataset)
    return None if keys is None else results.local_paths(state.blobs, keys, state.cache_dir)


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
    """Predictions filtered and paged by structured parameters (no SQL): of the dataset's
    own images or of a perturbation, by label, prediction, score and dataset attribute."""
    evaluation, res = evaluation_results(state, scope, name, q)
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
