"""Paired comparisons of two complete evaluations, the rows one fixed and the other broke,
and the leaderboard of a dataset (`dyff.compare`). Only the caller's own evaluations take
part (evaluations are never public); another account's answers 404."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from pydantic import Field

from api_shim.auth import AccountScope, ScopeDep
from api_shim.params import AccountQuery, NameStr
from api_shim.problems import responses
from api_shim.routes.results import complete_evaluation, results_gone_is_conflict
from api_shim.state import AppState, StateDep
from dyff import compare, layout, shard_lists, stats
from dyff.errors import Invalid
from dyff.lifecycle import EvaluationPhase
from dyff.results import MAX_LIMIT, MAX_OFFSET
from dyff.schema import Dataset, Evaluation, Schema

router = APIRouter(tags=["comparisons"])

EvalParam = Annotated[str, Query(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
Resamples = Annotated[
    int,
    Query(ge=1, le=stats.MAX_RESAMPLES, description="Bootstrap resamples for the intervals."),
]
Seed = Annotated[int, Query(ge=0, le=2**63 - 1, description="Seed of the bootstrap.")]
SliceBy = Annotated[
    list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]],
    Query(max_length=3, description="Attribute columns to compare per slice of (crossed)."),
]


class FlipRows(Schema):
    """Rows where exactly one of the two evaluations is right."""

    total: int = Field(description="Rows of this kind.")
    rows: list[dict[str, Any]] = Field(description="The requested page, in row order.")
    labels: list[str] = Field(description="Class names by id.")


def side(state: AppState, evaluation: Evaluation) -> compare.Side:
    """A complete evaluation's manifest and metrics (409 when they are gone)."""
    with results_gone_is_conflict(evaluation.name):
        return compare.load_side(state.blobs, evaluation)


def comparison(
    state: AppState,
    scope: AccountScope,
    a: str,
    b: str,
    resamples: int,
    seed: int,
    by: list[str] | None = None,
) -> compare.Comparison:
    evaluation_a = complete_evaluation(scope, a)
    sa, sb = side(state, evaluation_a), side(state, complete_evaluation(scope, b))
    attributes = None
    if by:
        if len(set(by)) != len(by):
            raise Invalid("a column is named twice in by", field="by")
        # The attribute files of A's dataset (the common rows are its rows).
        ref = evaluation_a.spec.dataset
        dataset = state.records.find(Dataset, ref.account or scope.account, ref.name)
        attributes = {}
        if dataset is not None:
            attributes = {
                s.sha256: layout.attributes_key(dataset.account, s.sha256, s.attributes)
                for s in shard_lists.listed_shards(state.blobs, [dataset])
                if s.attributes
            }
    with results_gone_is_conflict(f"{a}' or '{b}"):
        return compare.compare(
            state.blobs, sa, sb, state.cache_dir, resamples=resamples, seed=seed,
            by=by or (), attributes=attributes,
        )  # fmt: skip


@router.get("/v1/comparisons", responses=responses(401, 404, 409, 422))
def get_comparison(
    a: EvalParam,
    b: EvalParam,
    scope: ScopeDep,
    state: StateDep,
    resamples: Resamples = stats.DEFAULT_RESAMPLES,
    seed: Seed = 0,
    by: SliceBy = [],  # noqa: B006 - FastAPI copies defaults
) -> dict[str, Any]:
    """Compare two complete evaluations on the dataset rows they share: per metric both
    values and the difference B - A with 95 % paired-bootstrap intervals, McNemar's exact
    test on top-1 correctness, and per-class recall differences; with `by`, accuracy per
    slice of those dataset attributes too. 422 when they share no rows."""
    return comparison(state, scope, a, b, resamples, seed, by).doc


@router.get(
    "/v1/comparisons/rows", response_model=FlipRows, responses=responses(401, 404, 409, 422)
)
def get_comparison_rows(
    a: EvalParam,
    b: EvalParam,
    scope: ScopeDep,
    state: StateDep,
    kind: Annotated[
        Literal["fixed", "broken"] | None,
        Query(description="fixed: A wrong, B right; broken: A right, B wrong; both if absent."),
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> FlipRows:
    """The rows one evaluation got right and the other wrong, paged."""
    cmp = comparison(state, scope, a, b, stats.DEFAULT_RESAMPLES, 0)
    total, page = cmp.flip_rows(kind, offset, limit)
    return FlipRows(total=total, rows=page.to_dicts(), labels=cmp.doc["labels"])


REPORT_ROWS = 24  # flipped rows of each kind shown in the HTML report


def report_html(
    state: AppState, scope: AccountScope, a: str, b: str, resamples: int, seed: int
) -> str:
    """The comparison page, with thumbnails of the first flipped rows of each kind."""
    from dyff.report.comparison import add_images, render_comparison

    cmp = comparison(state, scope, a, b, resamples, seed)
    flipped: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for kind in compare.FLIP_KINDS:
        total, page = cmp.flip_rows(kind, 0, REPORT_ROWS)
        flipped[kind] = {"total": total, "rows": page.to_dicts()}
        rows += flipped[kind]["rows"]
    evaluation = complete_evaluation(scope, a)
    with results_gone_is_conflict(a):
        add_images(state.records, state.blobs, evaluation, rows, state.cache_dir)
    return render_comparison(cmp.doc, flipped)


@router.get(
    "/v1/comparisons/report",
    response_class=HTMLResponse,
    responses=responses(401, 404, 409, 422),
)
def get_comparison_report(
    a: EvalParam,
    b: EvalParam,
    scope: ScopeDep,
    state: StateDep,
    resamples: Resamples = stats.DEFAULT_RESAMPLES,
    seed: Seed = 0,
) -> HTMLResponse:
    """The comparison as a self-contained HTML page (no script): the difference chart with
    intervals, McNemar's table, per-class differences and the first flipped rows."""
    return HTMLResponse(report_html(state, scope, a, b, resamples, seed))


@router.get("/v1/datasets/{name}/leaderboard", responses=responses(401, 404, 409, 422))
def get_leaderboard(
    name: NameStr,
    scope: ScopeDep,
    state: StateDep,
    metric: Annotated[
        Literal["accuracy", "top5_accuracy", "macro_f1", "ece"], Query()
    ] = "accuracy",
    account: AccountQuery = None,
    limit: Annotated[int, Query(ge=1, le=compare.MAX_LEADERBOARD)] = 20,
    resamples: Resamples = stats.DEFAULT_RESAMPLES,
    seed: Seed = 0,
) -> dict[str, Any]:
    """The caller's complete evaluations on a dataset (its own, or a public one named with
    `account`), ranked by `metric` with 95 % bootstrap intervals, model digests and
    inference settings; `vsPrevious` says whether each differs significantly from the one
    ranked above it (McNemar's exact test for accuracy, else the paired-bootstrap interval
    of the difference)."""
    dataset = scope.readable(Dataset, name, account)
    owner = dataset.account
    evaluations = [
        e
        for e in scope.records.list_all(Evaluation, scope.account)
        if e.spec.dataset.name == name
        and (e.spec.dataset.account or e.account) == owner
        and e.status.phase == EvaluationPhase.COMPLETE
        and e.metadata.deletion_timestamp is None
    ]

    def value(e: Evaluation) -> float | None:
        """The headline value (status.metrics has a field per leaderboard metric)."""
        m = e.status.metrics
        return None if m is None else getattr(m, metric)

    lower_better = metric == "ece"
    evaluations.sort(
        key=lambda e: (
            value(e) is None,
            (value(e) or 0.0) if lower_better else -(value(e) or 0.0),
            e.name,
        )
    )
    shown = evaluations[:limit]
    entrants = []
    for e in shown:
        entrants.append(
            compare.Entrant(
                side=side(state, e),  # listed Complete above
                value=value(e),
                info={
                    "evaluation": e.name,
                    "model": e.spec.model.wire(),
                    "modelDigest": e.status.model_digest,
                    "inference": e.spec.inference.wire(),
                },
            )
        )
    with results_gone_is_conflict(name):
        rows = compare.leaderboard(
            state.blobs, entrants, metric, state.cache_dir, resamples=resamples, seed=seed
        )
    return {
        "dataset": {"name": dataset.name, "account": owner},
        "metric": metric,
        "higherIsBetter": not lower_better,
        "total": len(evaluations),
        "entries": rows,
    }
