"""An evaluation's results as an in-memory database: predictions in Parquet, queried with polars.

The prediction files are the contract between the evaluation workload, which
writes them, and every reader. One file per dataset shard, columns:

    row_id       int64         global row id in the dataset
    label        int32         true class id (index into the dataset's labels)
    predicted    int32         top-1 class id
    score        float32       top-1 probability
    correct      bool          predicted == label
    topk_labels  list[int32]   class ids, best first
    topk_scores  list[float32] their probabilities

Queries are structured (`PredictionQuery`), never SQL strings: filters on
label / predicted / correct / score and on the dataset's attributes of a row
(`slice`, read from the shards' attribute files), ordering, paging, and a few
aggregate views. A perturbed variant's rows are the same query over its own
files (the route picks them). Files are scanned lazily, so only the columns and row groups a query
needs are read (projection and predicate pushdown).

The metrics document of an evaluation (`stream_metrics`) is computed the same
way: the files are read a batch at a time, in order, into `dyff.metrics.Tally`,
so memory does not grow with the number of rows.

The two aggregate views over every row (`by_label`, `confusion`) stream the
two columns they need in batches and count with `numpy.bincount` into a
dense table while label ids are small (below `DENSE_LABELS`: most
classification tasks), which costs less than hashing group keys; otherwise
they fall back to a polars group-by. Both give the same frame.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from pydantic import Field, ValidationError, field_validator

from dyff import metrics
from dyff.errors import Invalid
from dyff.schema import (
    ATTRIBUTE_NAME_PATTERN,
    MAX_SLICE_COLUMNS,
    MAX_SLICE_VALUE_CHARS,
    PERTURBATION_SEVERITIES,
    PerturbationKind,
    Schema,
    re_search,
)
from dyff.stores.blobs import BlobStore
from dyff.stores.file import FileBlobStore

PREDICTION_SCHEMA: dict[str, Any] = {
    "row_id": pl.Int64,
    "label": pl.Int32,
    "predicted": pl.Int32,
    "score": pl.Float32,
    "correct": pl.Boolean,
    "topk_labels": pl.List(pl.Int32),
    "topk_scores": pl.List(pl.Float32),
}
COLUMNS = tuple(PREDICTION_SCHEMA)
MAX_LIMIT = 10_000
# Bounds of every query parameter, so no query can make polars raise (an offset past int64
# overflows `slice`; a label id past int32 cannot meet the int32 columns).
MAX_OFFSET = 10**12
MAX_LABEL_ID = 2**31 - 1
MAX_LABEL_FILTERS = 1000
LabelId = Annotated[int, Field(ge=0, le=MAX_LABEL_ID)]
# Label ids below this are counted in dense tables (the pairs in DENSE_LABELS**2 counters).
DENSE_LABELS = 256
# Rows of a prediction file read at a time by `stream_metrics`, and the read buffer.
METRICS_BATCH_ROWS = 64 * 1024
READ_BUFFER_BYTES = 1024 * 1024
MAX_SLICE_FILTER_CHARS = 64 + 1 + MAX_SLICE_VALUE_CHARS  # COLUMN:VALUE


class PredictionQuery(Schema):
    """A structured query over an evaluation's predictions. Every parameter is bounded, and a
    list parameter naming a value twice is refused (naming the parameter), not de-duplicated:
    `columns` decides the order of the answer's columns, so a repeat is a caller's mistake."""

    label: list[LabelId] | None = Field(
        default=None,
        max_length=MAX_LABEL_FILTERS,
        description="Keep rows whose true label is one of these.",
    )
    predicted: list[LabelId] | None = Field(
        default=None,
        max_length=MAX_LABEL_FILTERS,
        description="Keep rows predicted as one of these.",
    )
    correct: bool | None = Field(
        default=None, description="Keep only right (true) or wrong (false) rows."
    )
    min_score: float | None = Field(
        default=None, ge=0, le=1, description="Top-1 score at least this."
    )
    max_score: float | None = Field(
        default=None, ge=0, le=1, description="Top-1 score at most this."
    )
    order: Literal["row_id", "score_desc", "score_asc"] = Field(
        default="row_id", description="Ordering of the rows."
    )
    columns: list[Literal[COLUMNS]] | None = Field(  # type: ignore[valid-type]
        default=None, max_length=len(COLUMNS), description="Columns to return (default all)."
    )
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET, description="Rows to skip.")
    limit: int = Field(default=100, ge=1, le=MAX_LIMIT, description="Rows to return.")
    slice: list[Annotated[str, Field(max_length=MAX_SLICE_FILTER_CHARS)]] | None = Field(
        default=None,
        max_length=MAX_SLICE_COLUMNS,
        description="Keep rows whose dataset attributes have these values, each "
        "`COLUMN:VALUE` (a column of the dataset's status.attributes; the value as text, "
        "as a gate's slice compares it), each column at most once.",
    )
    perturbation: str | None = Field(
        default=None,
        max_length=64,
        description="The rows of the images under this perturbation, `KIND/SEVERITY`, "
        "one the evaluation's criteria asked for (default: the dataset's own images).",
    )

    @field_validator("slice")
    @classmethod
    def _slice_filters(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        columns = [slice_filter(v)[0] for v in values]
        if len(set(columns)) != len(columns):
            raise ValueError("each column at most once")
        return values

    @field_validator("perturbation")
    @classmethod
    def _perturbation(cls, value: str | None) -> str | None:
        if value is not None:
            perturbation_of(value)
        return value

    @field_validator("label", "predicted", "columns")
    @classmethod
    def _no_repeats(cls, values: list[Any] | None) -> list[Any] | None:
        if values is not None and len(set(values)) != len(values):
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            raise ValueError(f"names {', '.join(repeated)} more than once")
        return values


def slice_filter(text: str) -> tuple[str, str]:
    """`COLUMN:VALUE` -> (column, value); ValueError saying what is wrong."""
    column, sep, value = text.partition(":")
    if not sep or not re_search(ATTRIBUTE_NAME_PATTERN, column):
        raise ValueError(f"{text!r} is not COLUMN:VALUE with an attribute column name")
    if len(value) > MAX_SLICE_VALUE_CHARS or "\n" in value:
        raise ValueError(f"the value of {column} is at most {MAX_SLICE_VALUE_CHARS} characters")
    return column, value


def perturbation_of(text: str) -> tuple[str, int]:
    """`KIND/SEVERITY` -> (kind, severity); ValueError saying what is wrong."""
    kind, sep, severity = text.partition("/")
    kinds = get_args(PerturbationKind)
    if (
        not sep
        or kind not in kinds
        or severity not in {str(s) for s in range(1, PERTURBATION_SEVERITIES + 1)}
    ):
        raise ValueError(
            f"{text!r} is not KIND/SEVERITY, KIND one of {', '.join(kinds)} and SEVERITY 1 to "
            f"{PERTURBATION_SEVERITIES}"
        )
    return kind, int(severity)


def checked(q: PredictionQuery) -> PredictionQuery:
    """`q` validated again: a query built without validation (`model_construct`, or changed
    after it was made) is refused with Invalid, naming the parameter, before polars sees it."""
    try:
        return PredictionQuery.model_validate(q.model_dump(by_alias=True))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"][:1]) or None
        raise Invalid(f"{field}: {error['msg']}", field=field) from None


def _filters(q: PredictionQuery) -> pl.Expr | None:
    exprs: list[pl.Expr] = []
    if q.label is not None:
        exprs.append(pl.col("label").is_in(q.label))
    if q.predicted is not None:
        exprs.append(pl.col("predicted").is_in(q.predicted))
    if q.correct is not None:
        exprs.append(pl.col("correct") == q.correct)
    if q.min_score is not None:
        exprs.append(pl.col("score") >= q.min_score)
    if q.max_score is not None:
        exprs.append(pl.col("score") <= q.max_score)
    if not exprs:
        return None
    combined = exprs[0]
    for e in exprs[1:]:
        combined = combined & e
    return combined


class Results:
    """Lazy access to one evaluation's prediction files, and to its dataset's attribute
    files (`attributes`, for `slice` filters; None where the dataset has none)."""

    def __init__(self, paths: Sequence[Path], attributes: Sequence[Path] | None = None) -> None:
        self.paths = [str(p) for p in paths]
        self.attributes = None if attributes is None else [str(p) for p in attributes]

    def scan(self) -> pl.LazyFrame:
        if not self.paths:
            return pl.LazyFrame(schema=PREDICTION_SCHEMA)
        # The paths are files, never patterns: a `[` or `*` in a folder name stays literal.
        return pl.scan_parquet(self.paths, glob=False)

    def _filtered(self, q: PredictionQuery) -> pl.LazyFrame:
        lf = self.scan()
        where = _filters(q)
        if where is not None:
            lf = lf.filter(where)
        if q.slice:
            lf = lf.join(self._slice_rows(q.slice), on="row_id", how="semi")
        return lf

    def _slice_rows(self, filters: Sequence[str]) -> pl.LazyFrame:
        """The row ids whose attributes have the filters' values (Invalid, naming `slice`,
        for a column the dataset does not have)."""
        if not self.attributes:
            raise Invalid("slice: the dataset has no attribute files", field="query.slice")
        attrs = pl.scan_parquet(self.attributes, glob=False)
        have = attrs.collect_schema().names()
        condition = pl.lit(True)
        for column, value in (slice_filter(f) for f in filters):
            if column == "row_id" or column not in have:
                known = ", ".join(c for c in have if c != "row_id")
                raise Invalid(f"slice: no attribute {column!r} (the dataset has: {known})",
                              field="query.slice")  # fmt: skip
            condition = condition & (pl.col(column).cast(pl.String) == value)
        return attrs.filter(condition).select("row_id")

    def rows(self, q: PredictionQuery) -> pl.DataFrame:
        q = checked(q)
        lf = self._filtered(q)
        if q.order == "score_desc":
            lf = lf.sort(["score", "row_id"], descending=[True, False])
        elif q.order == "score_asc":
            lf = lf.sort(["score", "row_id"])
        else:
            lf = lf.sort("row_id")
        lf = lf.slice(q.offset, q.limit)
        if q.columns:
            lf = lf.select(q.columns)
        return lf.collect()

    def count(self, q: PredictionQuery | None = None) -> int:
        lf = self._filtered(checked(q)) if q else self.scan()
        return int(lf.select(pl.len()).collect().item())

    def by_label(self) -> pl.DataFrame:
        """Per true label: rows, correct, accuracy."""
        dense = self._dense_counts("label", "correct")
        if dense is None:
            frame = (
                self.scan()
                .group_by("label")
                .agg(rows=pl.len(), correct=pl.col("correct").sum())
                .collect()
            )
        else:
            rows, correct = dense
            (labels,) = np.nonzero(rows)
            frame = pl.DataFrame(
                {"label": labels, "rows": rows[labels], "correct": correct[labels]},
                schema={"label": pl.Int32, "rows": pl.UInt32, "correct": pl.UInt32},
            )
        return frame.with_columns(accuracy=pl.col("correct") / pl.col("rows")).sort("label")

    def confusion(self) -> pl.DataFrame:
        """Counts of (label, predicted) pairs that occur."""
        dense = self._dense_counts("label", "predicted")
        if dense is None:
            return (
                self.scan()
                .group_by("label", "predicted")
                .agg(count=pl.len())
                .sort("label", "predicted")
                .collect()
            )
        counts, width = dense[0], int(dense[1][0])
        (flat,) = np.nonzero(counts)  # row-major: sorted by label, then predicted
        return pl.DataFrame(
            {"label": flat // width, "predicted": flat % width, "count": counts[flat]},
            schema={"label": pl.Int32, "predicted": pl.Int32, "count": pl.UInt32},
        )

    def _dense_counts(self, key: str, other: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Counts over every row, streamed in batches, while ids stay below DENSE_LABELS.

        (label, correct): rows and correct rows per label. (label, predicted): counts of
        label * DENSE_LABELS + predicted, and the width. None when an id is negative or
        too large for the dense table (the caller then groups in polars).
        """
        pair = other == "predicted"
        size = DENSE_LABELS * DENSE_LABELS if pair else DENSE_LABELS
        first = np.zeros(size, dtype=np.int64)
        second = np.zeros(DENSE_LABELS, dtype=np.int64)
        for batch in self.scan().select(key, other).collect_batches():
            if batch.height == 0:
                continue
            ids = batch[key].to_numpy()
            values = batch[other].to_numpy()
            checked = (ids, values) if pair else (ids,)
            if any(a.min() < 0 or a.max() >= DENSE_LABELS for a in checked):
                return None
            if not pair:
                first += np.bincount(ids, minlength=size)
                second += np.bincount(ids, weights=values, minlength=size).astype(np.int64)
                continue
            codes = ids.astype(np.int64) * DENSE_LABELS + values
            if 4 * len(codes) >= size:
                first += np.bincount(codes, minlength=size)
            else:  # a small batch (a small file): sort it rather than sweep the table
                unique, counts = np.unique(codes, return_counts=True)
                first[unique] += counts
        return first, (np.array([DENSE_LABELS]) if pair else second)

    def confident_errors(self, limit: int = 20) -> pl.DataFrame:
        """The wrong predictions the model was surest of."""
        if not 1 <= limit <= MAX_LIMIT:
            raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
        return self.rows(PredictionQuery(correct=False, order="score_desc", limit=limit))


def local_paths(blobs: BlobStore, keys: Sequence[str], cache_dir: Path) -> list[Path]:
    """Local files for the given prediction keys: the files themselves for a local
    store; otherwise downloaded once into `cache_dir`. Prediction files never
    change once written (their keys are content-derived), so the cache needs no
    invalidation."""
    if isinstance(blobs, FileBlobStore):
        return [blobs.path(k) for k in keys]
    out = []
    for key in keys:
        local = cache_dir / hashlib.sha256(f"{blobs.url}/{key}".encode()).hexdigest()
        if not local.exists():
            tmp = local.with_suffix(".part")
            blobs.download(key, tmp)
            tmp.replace(local)
        out.append(local)
    return out


# -------------------------------------------------------------------- metrics


class RowCoverage:
    """Whether row ids, given a batch at a time, are each of 0..n-1 exactly once. Kept as
    runs of consecutive ids (one per shard file, merged as they follow each other), so
    memory follows the files, not the rows."""

    def __init__(self) -> None:
        self.count = 0
        self.runs: list[tuple[int, int]] = []  # [start, end) of consecutive ids

    def add(self, ids: np.ndarray) -> None:
        self.count += len(ids)
        if len(ids) == 0:
            return
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        breaks = np.flatnonzero(np.diff(ids) != 1) + 1  # a repeat breaks a run too
        starts = ids[np.concatenate([[0], breaks])].tolist()
        ends = (ids[np.concatenate([breaks - 1, [len(ids) - 1]])] + 1).tolist()
        for start, end in zip(starts, ends, strict=True):
            if self.runs and self.runs[-1][1] == start:
                self.runs[-1] = (self.runs[-1][0], end)
            else:
                self.runs.append((start, end))

    def exactly(self, n: int) -> bool:
        """The ids seen are 0..n-1, each once (the runs tile [0, n) without overlap)."""
        if self.count != n:
            return False
        end = 0
        for start, stop in sorted(self.runs):
            if start != end:
                return False
            end = stop
        return end == n


def prediction_batches(
    paths: Sequence[Path | str], columns: Sequence[str], batch_rows: int = METRICS_BATCH_ROWS
) -> Iterator[pl.DataFrame]:
    """The `columns` of the prediction files, in file order then row order, `batch_rows`
    rows at a time (a file's pages read through a fixed buffer)."""
    for path in paths:
        with pq.ParquetFile(path, buffer_size=READ_BUFFER_BYTES, pre_buffer=False) as pf:
            for batch in pf.iter_batches(batch_size=batch_rows, columns=list(columns)):
                if batch.num_rows:
                    frame = pl.from_arrow(batch)
                    assert isinstance(frame, pl.DataFrame)
                    yield frame


def stream_metrics(
    paths: Sequence[Path | str],
    label_names: list[str],
    wanted: Sequence[str],
    *,
    expected_rows: int,
    top5: bool = True,
    model_classes: int | None = None,
    batch_rows: int = METRICS_BATCH_ROWS,
) -> dict[str, Any]:
    """The metrics document from prediction files, after checking that they hold every
    dataset row exactly once (row ids 0..expected_rows-1), read a batch at a time: memory
    for one batch whatever the number of rows, and the very document `metrics.compute`
    gives over all the rows at once. `label_names` are the dataset's labels: predicted ids
    beyond them (model labels the dataset lacks) count as wrong and add no class.
    `model_classes` (default: the dataset's) decides whether top-5 accuracy means anything
    (`metrics.compute`); with `top5` False the stored top-k cannot answer it (null)."""
    columns = ["row_id", "label", "predicted", "score"]
    classes = len(label_names) if model_classes is None else model_classes
    need_topk = top5 and "top5_accuracy" in wanted and classes > metrics.TOP_K
    if need_topk:
        columns.append("topk_labels")
    tally = metrics.Tally(len(label_names))
    coverage = RowCoverage()
    bad: ValueError | None = None  # raised once the rows are known to be all there
    for frame in prediction_batches(paths, columns, batch_rows):
        coverage.add(frame["row_id"].to_numpy())
        if bad is not None:
            continue
        topk = None
        if need_topk:
            # The first 5 ids of every row, as wide as the shortest row's: a narrower row
            # anywhere narrows every row's (the batch's width, then the Tally's minimum).
            heads = frame["topk_labels"].list.head(metrics.TOP_K)
            shortest = heads.list.len().min()
            width = int(shortest) if isinstance(shortest, int) else 0
            topk = heads.list.head(width).list.to_array(width).to_numpy() if width else None
        try:
            tally.add(
                frame["label"].to_numpy(), frame["predicted"].to_numpy(),
                frame["score"].to_numpy(), topk,
            )  # fmt: skip
        except ValueError as exc:
            bad = exc
    if not coverage.exactly(expected_rows):
        raise RuntimeError(
            f"prediction files hold {coverage.count} rows, not each of the {expected_rows} "
            "dataset rows once"
        )
    if bad is not None:
        raise bad
    return tally.document(label_names, list(wanted), model_classes=model_classes)
