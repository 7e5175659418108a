"""Evaluation criteria that need no inference (issue 12): intervals, slices, quality gates.

Everything here is computed from an evaluation's prediction files (`dyff.results`) joined on
`row_id` with the dataset's attribute files (`dyff.datasets`, one per shard), so adding
criteria to an evaluated model-dataset pair never serves the model: the prediction reuse
key (`dyff.evaluation.inference_digest`) holds the inference settings only.

**Cells.** The rows are first counted into *cells* of identical contributions: (slice,
true label, predicted class, calibration bin, top-5 hit), with the number of rows and the
sum and sum of squares of their top-1 scores (fixed point: exact in any order). One pass:
the slice columns' values are numbered (a categorical of their own for text), each row's
cell is one int64, and the cells are counted in dense arrays (a polars group-by when there
are too many possible cells). Every metric is a
function of the cells (a prediction outside the dataset's labels is class `k`: wrong, no
column of its own, as `dyff.metrics`), so the rows are read once and everything after is
numpy over a few thousand cells, whatever the number of rows.

**Intervals.** Percentile bootstrap over rows (`dyff.stats.bootstrap`: multinomial counts
over groups of identical rows, which has the distribution of resampling row indices), one
bootstrap per family of metrics over its coarsest grouping: accuracy and top-5 over
(right, top-5 hit); macro precision/recall/F1 over (label, predicted); expected calibration
error over (bin, right), the confidence sum of the rows a resample draws from a group taken
from the group's mean and variance (normal, as `dyff.compare` does). Seeded: the same
predictions, attributes and criteria give the same document.

**Slices.** `slices: [{by: [COLUMN, ...]}]`: every metric per value of the columns (crossed),
with its support and intervals. A slice is flagged when its accuracy is significantly below
the rest's: one-sided two-proportion z-test of the slice against all other rows,
Benjamini-Hochberg over the slices of the spec at `q` (default 0.05), slices of fewer than
`minSupport` rows (default 30) untested. Flagged slices are listed most severe first (the
largest accuracy gap to the rest).

**Gates.** `gates: [{metric, op, value, slice?, using}]`: the metric of every row, or of the
rows whose attributes equal `slice` (compared as text: "3", "true"), its point value or a
bound of its interval, against the threshold. Each gate passes or fails with a message; a
gate whose slice is empty or whose metric the predictions cannot answer fails, saying so.

The result is one versioned JSON document (`criteria_results`, CRITERIA_VERSION) meant to
sit in metrics.json under `criteria`. Criteria naming a column the dataset does not have,
or slicing by a column of more than MAX_SLICE_VALUES values, fail with reason BadCriteria
(`check_criteria` says so before anything runs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dyff import layout, metrics, shard_lists, stats
from dyff.errors import WorkloadFailed
from dyff.results import local_paths
from dyff.schema import Criteria, Dataset, Gate, IntervalSpec, SliceSpec
from dyff.stores.blobs import BlobStore

CRITERIA_VERSION = 1
BAD_CRITERIA = "BadCriteria"
MAX_SLICE_VALUES = 500  # distinct values (crossed) of one slice spec
BINS = metrics.ECE_BINS
HEADLINE = ("accuracy", "top5Accuracy", "macroPrecision", "macroRecall", "macroF1", "ece")
GATE_METRICS = {
    "accuracy": "accuracy",
    "top5_accuracy": "top5Accuracy",
    "macro_precision": "macroPrecision",
    "macro_recall": "macroRecall",
    "macro_f1": "macroF1",
    "ece": "ece",
}
# Scores are summed in fixed point, units of 2^-24 (a row's rounding below 3e-8), so that
# sums are exact whatever order they are added in, in int64 or (below DENSE_ROWS rows) in
# float64 counts.
SCORE_SCALE = float(2**24)
DENSE_ROWS = 2**29
DENSE_CELLS = 1 << 22  # slices x cell codes counted in dense arrays up to this many


# ------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cells:
    """Counts of rows with identical contributions: per cell its true label, predicted
    class (k: outside the labels), calibration bin, top-5 hit, rows and score sums."""

    label: np.ndarray
    pred: np.ndarray
    bin: np.ndarray
    top5: np.ndarray
    n: np.ndarray
    s1: np.ndarray
    s2: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.n.sum())

    def subset(self, mask: np.ndarray) -> Cells:
        return Cells(*(getattr(self, f)[mask] for f in Cells.__dataclass_fields__))


def code_space(k: int) -> int:
    """How many cell codes there are for k labels (`row_code`'s values are below it)."""
    return k * (k + 1) * BINS * 2


def row_code(k: int, top5: bool) -> pl.Expr:
    """Each row's cell code (label, predicted class, bin, top-5 hit) as one int64, from the
    columns label, predicted, score and (with `top5`) a boolean `top5`. The bin is that of
    `dyff.metrics.calibration_bins` ((lo, hi], 0 in the first): for a float32 score, s * 15
    is exact in float64 and no float32 is a multiple of 1/15 but 0 and 1, so its ceiling
    gives the same bin as comparing with the edges."""
    predicted = pl.col("predicted").cast(pl.Int64)
    outside = (predicted < 0) | (predicted >= k)
    pred = pl.when(outside).then(pl.lit(k, pl.Int64)).otherwise(predicted)
    score = pl.col("score").cast(pl.Float32).cast(pl.Float64).fill_nan(1.0)
    bins = ((score * BINS).ceil().cast(pl.Int64) - 1).clip(0, BINS - 1)
    hit = pl.col("top5").fill_null(False).cast(pl.Int64) if top5 else pl.lit(0, pl.Int64)
    return ((pl.col("label").cast(pl.Int64) * (k + 1) + pred) * BINS + bins) * 2 + hit


def _too_many(by: Sequence[str], count: int) -> WorkloadFailed:
    return WorkloadFailed(
        BAD_CRITERIA,
        f"slices by {', '.join(by)}: {count} distinct values, above {MAX_SLICE_VALUES};"
        " slice by a coarser column",
    )


def _column_ids(series: pl.Series, by: Sequence[str]) -> tuple[np.ndarray, pl.Series]:
    """(each row's id, the values by id): ids number the column's distinct values in sorted
    order, null (if any) last. Text is numbered through a categorical of its own (one hash
    pass), anything else through its distinct values."""
    if series.dtype in (pl.String, pl.Categorical) or isinstance(series.dtype, pl.Enum):
        categories = pl.Categories.random()
        coded = series.cast(pl.String).cast(pl.Categorical(categories))
        # The categories live as long as a column uses them: read them while `coded` does.
        found = categories.to_series()
        physical = coded.to_physical()
        del coded
        if len(found) > MAX_SLICE_VALUES:
            raise _too_many(by, len(found))
        order = np.argsort(found.to_numpy().astype(str), kind="stable")
        rank = np.empty(len(found) + 1, dtype=np.int64)
        rank[order] = np.arange(len(found))
        rank[len(found)] = len(found)  # null
        raw = physical.fill_null(len(found)).to_numpy().astype(np.int64)
        values = found.gather(order)
        if physical.null_count():
            values = values.extend(pl.Series([None], dtype=values.dtype))
        return rank[raw], values
    distinct = series.unique()
    if len(distinct) > MAX_SLICE_VALUES:
        raise _too_many(by, len(distinct))
    values = distinct.sort(nulls_last=True)
    known = values.drop_nulls()
    ids = series.replace_strict(
        known, pl.Series(np.arange(len(known), dtype=np.int64)), default=len(known),
        return_dtype=pl.Int64,
    )  # fmt: skip
    return ids.to_numpy(), values


def slice_ids(frame: pl.DataFrame, by: Sequence[str]) -> tuple[np.ndarray, pl.DataFrame]:
    """(each row's slice number, the slices): slices are the distinct values of the `by`
    columns (crossed) that occur, sorted (nulls last), numbered in `slice`. BadCriteria
    beyond MAX_SLICE_VALUES, before any heavier work."""
    combined = np.zeros(frame.height, dtype=np.int64)
    columns = []
    for column in by:
        ids, values = _column_ids(frame[column], by)
        combined = combined * len(values) + ids
        columns.append(values)
    if len(by) == 1:  # every value numbered occurs: the ids are the slice numbers
        table = pl.DataFrame([columns[0].alias(by[0])]).with_row_index("slice")
        return combined, table
    present = pl.Series(combined).unique().sort().to_numpy()
    if len(present) > MAX_SLICE_VALUES:
        raise _too_many(by, len(present))
    keys: dict[str, pl.Series] = {}
    rest = present.copy()
    for column, values in reversed(list(zip(by, columns, strict=True))):
        keys[column] = values.gather(rest % len(values)).alias(column)
        rest //= len(values)
    table = pl.DataFrame([keys[c] for c in by]).with_row_index("slice")
    return np.searchsorted(present, combined), table


def group_cells(
    frame: pl.DataFrame, by: Sequence[str], k: int, top5: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(slice keys, cells): the rows of `frame` counted per (slice, cell code), as columns
    slice, code, n, s1, s2 sorted by slice then code (one order whatever order the group-by
    worked in: the bootstrap's groups, and so its draws, follow it). One count over one
    int64 key (slice number x code space + code): dense arrays while there are at most
    DENSE_CELLS keys, else a polars group-by (both give the same table). Without `by`, one
    slice 0."""
    space = code_space(k)
    code = frame.select(row_code(k, top5).alias("code"))["code"].to_numpy()
    keys = pl.DataFrame({"slice": pl.Series([0], dtype=pl.UInt32)})
    key = code
    if by:
        ids, keys = slice_ids(frame, by)
        key = ids * space + code
    width = keys.height * space
    if width <= DENSE_CELLS and frame.height <= DENSE_ROWS:
        # Few possible cells: count them in dense arrays (bincount), no hashing.
        scores = np.nan_to_num(frame["score"].to_numpy().astype(np.float64), nan=0.0)
        n = np.bincount(key, minlength=width)
        present = np.flatnonzero(n)
        s1 = np.bincount(key, weights=np.rint(scores * SCORE_SCALE), minlength=width)
        s2 = np.bincount(key, weights=np.rint(scores * scores * SCORE_SCALE), minlength=width)
        cells = pl.DataFrame(
            {
                "slice": present // space,
                "code": present % space,
                "n": n[present],
                "s1": s1[present].astype(np.int64),
                "s2": s2[present].astype(np.int64),
            }
        )
        return keys, cells
    score = pl.col("score").cast(pl.Float64).fill_nan(0.0)
    cells = (
        frame.lazy()
        .with_columns(key=pl.Series(key))
        .group_by("key")
        .agg(
            n=pl.len(),
            s1=(score * SCORE_SCALE).round().cast(pl.Int64).sum(),
            s2=(score * score * SCORE_SCALE).round().cast(pl.Int64).sum(),
        )
        .sort("key")
        .select(
            (pl.col("key") // space).alias("slice"),
            (pl.col("key") % space).alias("code"),
            "n",
            "s1",
            "s2",
        )
        .collect()
    )
    return keys, cells


def cells_of(table: pl.DataFrame, k: int) -> Cells:
    """Decode (rows of) a `group_cells` table, in its order."""
    code = table["code"].to_numpy().astype(np.int64)
    hit = code % 2
    rest = code // 2
    bins = rest % BINS
    rest //= BINS
    return Cells(
        label=rest // (k + 1),
        pred=rest % (k + 1),
        bin=bins,
        top5=hit.astype(bool),
        n=table["n"].to_numpy().astype(np.int64),
        s1=table["s1"].to_numpy().astype(np.float64) / SCORE_SCALE,
        s2=table["s2"].to_numpy().astype(np.float64) / SCORE_SCALE,
    )


# ------------------------------------------------------------------ metrics


def point_metrics(cells: Cells, k: int, top5: bool) -> dict[str, float | None]:
    """The headline metrics of the rows in `cells`, as `dyff.metrics.compute` gives them."""
    n = cells.rows
    if n == 0:
        return dict.fromkeys(HEADLINE)
    right = cells.label == cells.pred
    cm = np.bincount(
        cells.label * (k + 1) + cells.pred, weights=cells.n, minlength=k * (k + 1)
    ).reshape(k, k + 1)
    scores = metrics.class_scores(cm[:, :k].astype(np.int64), cm[:, k].astype(np.int64))
    # ECE = sum over bins of |right rows - summed confidence| / rows
    conf = np.bincount(cells.bin, weights=cells.s1, minlength=BINS)
    hits = np.bincount(cells.bin, weights=cells.n * right, minlength=BINS)
    return {
        "accuracy": float(cells.n[right].sum() / n),
        "top5Accuracy": float(cells.n[cells.top5].sum() / n) if top5 else None,
        "macroPrecision": scores.macro_precision,
        "macroRecall": scores.macro_recall,
        "macroF1": scores.macro_f1,
        "ece": float(np.abs(hits - conf).sum() / n),
    }


def _groups(codes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(present codes, rows per code) of cells keyed by `codes`, weighted by their rows."""
    present, inverse = np.unique(codes, return_inverse=True)
    sizes = np.bincount(inverse, weights=weights, minlength=len(present)).astype(np.int64)
    return present, sizes


def interval_metrics(
    cells: Cells, k: int, top5: bool, spec: IntervalSpec, seed: Sequence[int] = ()
) -> dict[str, list[float | None]]:
    """[low, high] of each headline metric over `spec.resamples` bootstrap resamples of the
    rows in `cells` (see the module's docstring); `seed` extends the spec's seed (a slice's
    position), so every slice draws its own resamples, reproducibly."""
    n = cells.rows
    none: list[float | None] = [None, None]
    if n == 0:
        return {m: none for m in HEADLINE}
    base = (spec.seed, *seed)
    kw: dict[str, Any] = {"resamples": spec.resamples, "level": spec.level}
    right = cells.label == cells.pred
    out: dict[str, list[float | None]] = {}

    # accuracy and top-5: groups (right, top-5 hit)
    present, sizes = _groups(right * 2 + cells.top5, cells.n)
    is_right = (present >= 2).astype(np.float64)
    is_hit = (present % 2).astype(np.float64)

    def hits(counts: np.ndarray, _: np.random.Generator) -> np.ndarray:
        c = counts.astype(np.float64)
        return np.stack([c @ is_right / n, c @ is_hit / n], axis=1)

    acc, hit = stats.bootstrap(hits, sizes, seed=(*base, 1), **kw)
    out["accuracy"] = [acc.low, acc.high]
    out["top5Accuracy"] = [hit.low, hit.high] if top5 else none

    # macro precision/recall/F1: groups (label, predicted class)
    present, sizes = _groups(cells.label * (k + 1) + cells.pred, cells.n)
    g_label, g_pred = present // (k + 1), present % (k + 1)
    support_of = stats.GroupSums(g_label, k)
    tp_of = stats.GroupSums(g_label, k, g_pred == g_label)
    predicted_of = stats.GroupSums(g_pred, k, g_pred < k)

    def macro(counts: np.ndarray, _: np.random.Generator) -> np.ndarray:
        c = counts.astype(np.float64)
        return stats.macro_scores(tp_of(c), predicted_of(c), support_of(c))

    p, r, f = stats.bootstrap(macro, sizes, seed=(*base, 2), **kw)
    out["macroPrecision"], out["macroRecall"], out["macroF1"] = (
        [p.low, p.high], [r.low, r.high], [f.low, f.high]
    )  # fmt: skip

    # ECE: groups (bin, right); the confidence drawn per group from its mean and variance
    codes = cells.bin * 2 + right
    present, inverse = np.unique(codes, return_inverse=True)
    g = len(present)
    sizes = np.bincount(inverse, weights=cells.n, minlength=g)
    mean = np.bincount(inverse, weights=cells.s1, minlength=g) / sizes
    var = np.maximum(np.bincount(inverse, weights=cells.s2, minlength=g) / sizes - mean**2, 0.0)
    sd = np.sqrt(var)
    e_right = (present % 2).astype(np.float64)
    by_bin = stats.GroupSums(present // 2, BINS)

    def ece(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = counts.astype(np.float64)
        conf = c * mean + np.sqrt(c) * sd * rng.standard_normal(c.shape)
        return np.abs(by_bin(c * e_right) - by_bin(conf)).sum(axis=1) / n

    (e,) = stats.bootstrap(ece, sizes.astype(np.int64), seed=(*base, 3), **kw)
    out["ece"] = [e.low, e.high]
    return out


def metric_entries(
    cells: Cells, k: int, top5: bool, spec: IntervalSpec, seed: Sequence[int] = ()
) -> dict[str, dict[str, float | None]]:
    """{metric: {value, low, high}} of the rows in `cells`."""
    values = point_metrics(cells, k, top5)
    bounds = interval_metrics(cells, k, top5, spec, seed)
    return {
        m: {"value": values[m], "low": bounds[m][0], "high": bounds[m][1]}
        if values[m] is not None
        else {"value": None, "low": None, "high": None}
        for m in HEADLINE
    }


# ------------------------------------------------------------------ slices


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def slice_results(
    frame: pl.DataFrame, spec: SliceSpec, k: int, top5: bool, intervals: IntervalSpec, index: int
) -> dict[str, Any]:
    """One slice spec's document: every slice value's metrics, and the flagged ones."""
    by = list(spec.by)
    keys, table = group_cells(frame, by, k, top5)
    slice_ids = table["slice"].to_numpy().astype(np.int64)
    all_cells = cells_of(table, k)
    right_rows = all_cells.n * (all_cells.label == all_cells.pred)
    support = np.bincount(slice_ids, weights=all_cells.n, minlength=keys.height).astype(np.int64)
    right = np.bincount(slice_ids, weights=right_rows, minlength=keys.height).astype(np.int64)
    total, total_right = int(support.sum()), int(right.sum())
    tested = support >= spec.min_support
    p_values = stats.proportion_below(right, support, total_right, total)
    q_values = np.ones(keys.height)
    q_values[tested] = stats.benjamini_hochberg(p_values[tested])
    flagged = tested & (q_values <= spec.q)
    values: list[dict[str, Any]] = []
    key_rows = keys.drop("slice").rows()
    for i, key in enumerate(key_rows):
        rest_rows = total - int(support[i])
        rest_accuracy = (total_right - int(right[i])) / rest_rows if rest_rows else None
        entry: dict[str, Any] = {
            "key": {c: _json_value(v) for c, v in zip(by, key, strict=True)},
            "support": int(support[i]),
            "metrics": metric_entries(
                all_cells.subset(slice_ids == i), k, top5, intervals, (10 + index, i)
            ),
            "restSupport": rest_rows,
            "restAccuracy": rest_accuracy,
            "tested": bool(tested[i]),
            "pValue": float(p_values[i]) if tested[i] else None,
            "qValue": float(q_values[i]) if tested[i] else None,
            "flagged": bool(flagged[i]),
        }
        values.append(entry)
    severe = sorted(
        (v for v in values if v["flagged"]),
        key=lambda v: (-(v["restAccuracy"] - v["metrics"]["accuracy"]["value"]), v["pValue"]),
    )
    return {
        "by": by,
        "q": spec.q,
        "minSupport": spec.min_support,
        "values": values,
        "flagged": [
            {
                "key": v["key"],
                "support": v["support"],
                "accuracy": v["metrics"]["accuracy"]["value"],
                "restAccuracy": v["restAccuracy"],
                "gap": v["restAccuracy"] - v["metrics"]["accuracy"]["value"],
                "pValue": v["pValue"],
                "qValue": v["qValue"],
            }
            for v in severe
        ],
    }


# ------------------------------------------------------------------- gates


def _describe(gate: Gate) -> str:
    if gate.name:
        return gate.name
    where = ""
    if gate.slice:
        where = " on " + ", ".join(f"{c}={v}" for c, v in gate.slice.items())
    using = "" if gate.using == "point" else f" ({gate.using.replace('_', ' ')})"
    return f"{gate.metric}{using} {gate.op} {gate.value:g}{where}"


_OPS = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}


def gate_results(
    frame: pl.DataFrame,
    gates: Sequence[Gate],
    k: int,
    top5: bool,
    intervals: IntervalSpec,
    whole: dict[str, dict[str, float | None]],
) -> dict[str, Any]:
    """Each gate's verdict, and whether all passed (with every failing gate named)."""
    out: list[dict[str, Any]] = []
    for i, gate in enumerate(gates):
        name = _describe(gate)
        metric = GATE_METRICS[gate.metric]
        entries = whole
        rows = frame.height
        if gate.slice:
            mask = pl.lit(True)
            for column, value in gate.slice.items():
                mask = mask & (_as_text(pl.col(column)) == value)
            sub = frame.filter(mask)
            rows = sub.height
            entries = (
                metric_entries(cells_of(group_cells(sub, [], k, top5)[1], k), k, top5,
                               intervals, (1000 + i,))
                if rows
                else {}
            )  # fmt: skip
        entry = entries.get(metric) or {}
        key = {"point": "value", "lower_bound": "low", "upper_bound": "high"}[gate.using]
        observed = entry.get(key)
        if rows == 0:
            passed, why = False, "no rows have these attribute values"
        elif observed is None:
            passed, why = False, f"{gate.metric} is not available for these predictions"
        else:
            passed = bool(_OPS[gate.op](observed, gate.value))
            bound = "" if gate.using == "point" else " " + gate.using.replace("_", " ")
            why = f"{gate.metric}{bound} is {observed:.4f}"
        out.append(
            {
                "name": name,
                "gate": gate.wire(),
                "rows": rows,
                "observed": observed,
                "passed": passed,
                "message": f"{name}: {'passed' if passed else 'failed'} ({why})",
            }
        )
    failed = [g for g in out if not g["passed"]]
    if not out:
        message = "no gates"
    elif failed:
        message = f"{len(failed)} of {len(out)} gates failed: " + "; ".join(
            g["message"] for g in failed
        )
    else:
        message = f"all {len(out)} gates passed"
    return {"passed": not failed, "failed": [g["name"] for g in failed], "message": message,
            "results": out}  # fmt: skip


def _as_text(expr: pl.Expr) -> pl.Expr:
    """An attribute as the text a gate's slice value is compared with."""
    return expr.cast(pl.String)


# ------------------------------------------------------------------ the whole


def columns_of(criteria: Criteria | None) -> list[str]:
    """The attribute columns the criteria use, in first-use order."""
    if criteria is None:
        return []
    out: dict[str, None] = {}
    for s in criteria.slices:
        out.update(dict.fromkeys(s.by))
    for g in criteria.gates:
        out.update(dict.fromkeys(g.slice or {}))
    return list(out)


def check_criteria(criteria: Criteria | None, attributes: Sequence[str] | None) -> str | None:
    """Why the criteria cannot be computed on a dataset with these attribute columns
    (its status.attributes), or None when they can. For the order path (HTTP 422) and the
    controller; `criteria_results` raises BadCriteria with the same message."""
    missing = [c for c in columns_of(criteria) if c not in (attributes or [])]
    if not missing:
        return None
    have = ", ".join(attributes or []) or "none (ingested before attributes were kept)"
    return (
        f"criteria use attribute column{'s' if len(missing) > 1 else ''}"
        f" {', '.join(missing)}, which the dataset does not have (its attributes: {have})"
    )


def criteria_frame(
    prediction_paths: Sequence[Path | str],
    attribute_paths: Sequence[Path | str],
    columns: Sequence[str],
    top5: bool,
) -> pl.DataFrame:
    """Predictions (label, predicted, score, top5 hit) with the attribute `columns`, joined
    on row_id. The files are in the same shard order, so the rows usually line up already;
    otherwise they are joined."""
    select = [pl.col("row_id"), pl.col("label"), pl.col("predicted"), pl.col("score")]
    if top5:
        head = pl.col("topk_labels").list.head(metrics.TOP_K)
        select.append(head.list.contains(pl.col("label")).fill_null(False).alias("top5"))
    preds = pl.scan_parquet([str(p) for p in prediction_paths], glob=False).select(select)
    frame = preds.collect()
    if not columns:
        return frame
    attrs = (
        pl.scan_parquet([str(p) for p in attribute_paths], glob=False)
        .select(["row_id", *columns])
        .collect()
    )
    if attrs.height == frame.height and attrs["row_id"].equals(frame["row_id"]):
        return frame.hstack(attrs.drop("row_id").get_columns())
    return frame.join(attrs, on="row_id", how="left")


def compute(
    frame: pl.DataFrame, labels: Sequence[str], criteria: Criteria | None, *, top5: bool
) -> dict[str, Any]:
    """The criteria document of a joined frame (`criteria_frame`)."""
    criteria = criteria or Criteria()
    k = len(labels)
    spec = criteria.intervals
    whole = metric_entries(cells_of(group_cells(frame, [], k, top5)[1], k), k, top5, spec)
    slices = [slice_results(frame, s, k, top5, spec, i) for i, s in enumerate(criteria.slices)]
    return {
        "version": CRITERIA_VERSION,
        "rows": frame.height,
        "intervals": {
            "method": "percentile bootstrap over rows",
            "resamples": spec.resamples,
            "level": spec.level,
            "seed": spec.seed,
            "metrics": whole,
        },
        "slices": slices,
        "gates": gate_results(frame, criteria.gates, k, top5, spec, whole),
    }


def accuracy_interval(doc: dict[str, Any]) -> list[float] | None:
    """[low, high] of accuracy's interval in a metrics document (for the status and
    kubectl), if it has one."""
    found = ((doc.get("criteria") or {}).get("intervals") or {}).get("metrics") or {}
    accuracy = found.get("accuracy") or {}
    low, high = accuracy.get("low"), accuracy.get("high")
    return None if low is None or high is None else [round(low, 4), round(high, 4)]


def attribute_keys(blobs: BlobStore, dataset: Dataset) -> list[str] | None:
    """The attribute files of a dataset's shards, in shard order; None when a shard has
    none (a dataset ingested before attributes were kept)."""
    shards = shard_lists.shards_of(blobs, dataset)
    if any(s.attributes is None for s in shards):
        return None
    return [layout.attributes_key(dataset.account, s.sha256, s.attributes or "") for s in shards]


def criteria_results(
    blobs: BlobStore,
    prediction_keys: Sequence[str],
    dataset: Dataset,
    labels: Sequence[str],
    criteria: Criteria | None,
    *,
    metrics_doc: dict[str, Any] | None = None,
    cache_dir: Path,
) -> dict[str, Any]:
    """The criteria document (version CRITERIA_VERSION) of an evaluation: its prediction
    files (the manifest's keys, in shard order), its dataset (for the attribute files), the
    labels metrics were computed over, and `spec.criteria` (None: intervals only, with the
    defaults). `metrics_doc` (metrics.json as `results.stream_metrics` gives it) says whether top-5
    accuracy means anything here. Raises WorkloadFailed(BadCriteria) for criteria the
    dataset cannot answer."""
    columns = columns_of(criteria)
    if (why := check_criteria(criteria, dataset.status.attributes)) is not None:
        raise WorkloadFailed(BAD_CRITERIA, why)
    attr_keys: list[str] = []
    if columns:
        found = attribute_keys(blobs, dataset)
        if found is None:
            raise WorkloadFailed(
                BAD_CRITERIA,
                f"dataset {dataset.name} has shards without attribute files; ingest it again"
                " to slice by its attributes",
            )
        attr_keys = found
    top5 = metrics_doc is None or metrics_doc.get("top5Accuracy") is not None
    cache_dir.mkdir(parents=True, exist_ok=True)
    preds = local_paths(blobs, prediction_keys, cache_dir)
    attrs = local_paths(blobs, attr_keys, cache_dir) if attr_keys else []
    frame = criteria_frame(preds, attrs, columns, top5)
    return compute(frame, labels, criteria, top5=top5)
