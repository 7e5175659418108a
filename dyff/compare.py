"""Paired comparison of two complete evaluations, from their prediction files (no inference).

Two evaluations line up row by row where they predicted the same dataset shards: a shard is
named by the sha256 of its bytes, its rows carry their `row_id`, so the same shard digest in
both manifests means the same images with the same labels. The comparison covers the rows
of the shards both evaluations have (the same dataset, or datasets sharing shards) and says
how many there are; none is an error naming both evaluations.

For each metric (accuracy; top-5 when both kept 5 labels; macro precision, recall and F1;
expected calibration error) it gives A's value, B's value and the difference B - A on the
common rows, with a 95 % paired-bootstrap interval of each (`dyff.stats.bootstrap`): every
resample draws the rows once and applies them to both evaluations. Each group of metrics is
bootstrapped over the coarsest grouping of rows that determines it (accuracy: right/wrong by
A x right/wrong by B; macro scores and per-class recall: (label, A's prediction, B's
prediction); ECE: (A's bin, A right, B's bin, B right)), which has the distribution of
resampling row indices. ECE also needs the sum of the confidences drawn in each group: given
how many rows a resample draws from a group, that sum is taken from the group's mean and
covariance of (A's, B's) confidence (normal, by the central limit theorem; within a group
every confidence lies in one bin of width 1/15, so this is a small part of the spread).

McNemar's exact test is on top-1 correctness (`dyff.stats.mcnemar`); the rows A got wrong
and B right are `fixed`, those A got right and B wrong `broken`, and they are kept for paging
(`flip_rows`). Per class: the recall (accuracy on the class's rows) of each and the
difference with its interval.

Results are cached under `cache_dir/comparisons/` by the pair of prediction-file lists
(their keys name the model digest, inference digest and shard digest, so the same keys are
the same predictions) and the bootstrap settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dyff import layout, metrics, stats
from dyff.criteria import slice_ids
from dyff.errors import Conflict, Invalid, NotFound
from dyff.results import MAX_LIMIT, MAX_OFFSET, local_paths
from dyff.schema import Evaluation
from dyff.stores.blobs import BlobStore

VERSION = 1  # of the computation: part of the cache key
MAX_RESAMPLES = stats.MAX_RESAMPLES
FLIP_KINDS = ("fixed", "broken")


class NoCommonRows(Invalid):
    """The two evaluations share no dataset rows (422)."""


@dataclass(frozen=True)
class Side:
    """What a comparison needs of one evaluation: its prediction files and label names."""

    name: str
    account: str
    files: list[str]  # prediction keys in shard order (the manifest)
    labels: list[str]  # the dataset's labels (ids of `label` and in-range `predicted`)
    top5: bool  # its metrics have a top-5 accuracy (it kept at least 5 labels per row)
    model_digest: str | None = None
    inference_digest: str | None = None
    rows: int | None = None

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "account": self.account,
            "modelDigest": self.model_digest,
            "inferenceDigest": self.inference_digest,
            "rows": self.rows,
            "shards": len(self.files),
        }


def shard_of(key: str) -> str:
    """The shard digest a prediction file is for (its key ends in `<shard>.parquet`)."""
    base = posixpath.basename(key)
    return base[: -len(".parquet")] if base.endswith(".parquet") else base


def load_side(blobs: BlobStore, evaluation: Evaluation) -> Side:
    """A complete evaluation's manifest and metrics. Raises NotFound when they are gone."""
    uid = evaluation.metadata.uid or ""
    account, name = evaluation.account, evaluation.name
    manifest = json.loads(blobs.get(layout.manifest_key(account, name, uid)))
    doc = json.loads(blobs.get(layout.metrics_key(account, name, uid)))
    labels = doc.get("labels")
    if not isinstance(labels, list):
        raise NotFound(f"evaluation {name!r} has no label list in its metrics")
    return Side(
        name=name,
        account=account,
        files=[str(k) for k in manifest["files"]],
        labels=[str(x) for x in labels],
        top5=doc.get("top5Accuracy") is not None,
        model_digest=doc.get("modelDigest") or evaluation.status.model_digest,
        inference_digest=doc.get("inferenceDigest"),
        rows=doc.get("rows"),
    )


def common_files(a: Side, b: Side) -> list[tuple[str, str, str]]:
    """(shard digest, A's key, B's key) for the shards both predicted, in A's order."""
    b_by_shard = {shard_of(k): k for k in b.files}
    seen: set[str] = set()
    out = []
    for key in a.files:
        shard = shard_of(key)
        if shard in b_by_shard and shard not in seen:
            seen.add(shard)
            out.append((shard, key, b_by_shard[shard]))
    return out


# ------------------------------------------------------------------ the rows


@dataclass
class Paired:
    """The common rows, aligned: index i is the same dataset row in both."""

    shards: list[str]
    shard: np.ndarray  # int32 index into `shards`
    row_id: np.ndarray
    label: np.ndarray
    pred_a: np.ndarray
    pred_b: np.ndarray
    score_a: np.ndarray
    score_b: np.ndarray
    top5_a: np.ndarray | None
    top5_b: np.ndarray | None

    def __len__(self) -> int:
        return len(self.label)


def _read(paths: Sequence[Path | str], top5: bool) -> pl.DataFrame:
    cols = [
        pl.col("row_id"),
        pl.col("label"),
        pl.col("predicted"),
        pl.col("score"),
    ]
    if top5:
        cols.append(
            pl.col("topk_labels")
            .list.head(metrics.TOP_K)
            .list.contains(pl.col("label"))
            .alias("top5")
        )
    frames = [pl.scan_parquet(str(p), glob=False).select(cols) for p in paths]
    # One scan per file, collected together: the files are read in parallel and their rows
    # keep the files' order, with the shard's position attached.
    scans = [f.with_columns(shard=pl.lit(i, dtype=pl.Int32)) for i, f in enumerate(frames)]
    return pl.concat(pl.collect_all(scans)) if scans else pl.DataFrame()


def load_pairs(
    shards: list[str],
    paths_a: Sequence[Path | str],
    paths_b: Sequence[Path | str],
    *,
    top5: bool,
) -> Paired:
    """Read both evaluations' files of the common shards and align their rows. The same
    shard has the same rows in the same order in both (the fast path); otherwise the rows
    are joined on (shard, row_id)."""
    fa, fb = _read(paths_a, top5), _read(paths_b, top5)
    aligned = (
        fa.height == fb.height
        and fa.height > 0
        and np.array_equal(fa["row_id"].to_numpy(), fb["row_id"].to_numpy())
        and np.array_equal(fa["shard"].to_numpy(), fb["shard"].to_numpy())
    )
    if not aligned:
        if fa.height == 0 or fb.height == 0:
            fa, fb = fa.head(0), fb.head(0)
        else:
            joined = fa.join(fb, on=["shard", "row_id"], how="inner", suffix="_b")
            joined = joined.sort("shard", "row_id")
            fa = joined.select(fa.columns)
            fb = joined.select(
                "shard",
                "row_id",
                pl.col("label_b").alias("label"),
                pl.col("predicted_b").alias("predicted"),
                pl.col("score_b").alias("score"),
                *([pl.col("top5_b").alias("top5")] if top5 else []),
            )
    if fa.height and not np.array_equal(fa["label"].to_numpy(), fb["label"].to_numpy()):
        raise Conflict("the evaluations' files disagree on the true labels of common rows")

    def col(frame: pl.DataFrame, name: str, dtype: Any) -> np.ndarray:
        if frame.height == 0:
            return np.zeros(0, dtype=dtype)
        return frame[name].to_numpy().astype(dtype, copy=False)

    return Paired(
        shards=list(shards),
        shard=col(fa, "shard", np.int32),
        row_id=col(fa, "row_id", np.int64),
        label=col(fa, "label", np.int64),
        pred_a=col(fa, "predicted", np.int64),
        pred_b=col(fb, "predicted", np.int64),
        score_a=col(fa, "score", np.float64),
        score_b=col(fb, "score", np.float64),
        top5_a=col(fa, "top5", bool) if top5 else None,
        top5_b=col(fb, "top5", bool) if top5 else None,
    )


# -------------------------------------------------------------- statistics


def _groups(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(present codes, rows per code, each row's group index) of codes in 0..size-1."""
    if size <= 1 << 22:
        counts = np.bincount(codes, minlength=size)
        present = np.flatnonzero(counts)
        index = np.zeros(size, dtype=np.int64)
        index[present] = np.arange(len(present))
        return present, counts[present], index[codes]
    present, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    return present, counts, inverse


def _interval(iv: stats.Interval) -> list[float | None]:
    return [iv.low, iv.high]


def _entry(metric: str, a: float, b: float, ivs: Sequence[stats.Interval]) -> dict[str, Any]:
    return {
        "metric": metric,
        "a": a,
        "b": b,
        "difference": b - a,
        "aInterval": _interval(ivs[0]),
        "bInterval": _interval(ivs[1]),
        "interval": _interval(ivs[2]),
    }


def paired_rates(
    hit_a: np.ndarray, hit_b: np.ndarray, *, resamples: int, seed: Any, level: float
) -> list[stats.Interval]:
    """Intervals of A's rate, B's rate and B - A over the same resampled rows: four
    groups (hit or miss by A x by B) carry everything a resample needs."""
    n = len(hit_a)
    present, sizes, _ = _groups(hit_a.astype(np.int64) * 2 + hit_b, 4)
    ra = (present >= 2).astype(np.float64)
    rb = (present % 2 == 1).astype(np.float64)

    def rates(counts: np.ndarray, _: np.random.Generator) -> np.ndarray:
        c = counts.astype(np.float64)
        a, b = c @ ra / n, c @ rb / n
        return np.stack([a, b, b - a], axis=1)

    return stats.bootstrap(rates, sizes, resamples=resamples, seed=seed, level=level)


def compute(
    p: Paired,
    labels: list[str],
    *,
    resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = stats.DEFAULT_LEVEL,
) -> dict[str, Any]:
    """The comparison document of aligned rows (see the module's docstring)."""
    n = len(p)
    k = len(labels)
    ca, cb = p.pred_a == p.label, p.pred_b == p.label
    test = stats.mcnemar(ca, cb)
    doc: dict[str, Any] = {
        "rows": n,
        "resamples": resamples,
        "seed": seed,
        "level": level,
        "labels": labels,
        "mcnemar": {
            "table": test.table,
            "bothRight": test.both_right,
            "broken": test.broken,
            "fixed": test.fixed,
            "bothWrong": test.both_wrong,
            "pValue": test.p_value,
        },
    }
    entries: list[dict[str, Any]] = []

    ivs = paired_rates(ca, cb, resamples=resamples, seed=(seed, 1), level=level)
    entries.append(_entry("accuracy", metrics.accuracy(p.label, p.pred_a),
                          metrics.accuracy(p.label, p.pred_b), ivs))  # fmt: skip
    if p.top5_a is not None and p.top5_b is not None:
        ivs = paired_rates(p.top5_a, p.top5_b, resamples=resamples, seed=(seed, 2), level=level)
        entries.append(_entry("top5_accuracy", float(p.top5_a.mean()), float(p.top5_b.mean()), ivs))

    # macro precision/recall/F1 and per-class recall: groups (label, A's, B's prediction),
    # a prediction outside the labels as class k (wrong, and no column of its own).
    w = k + 1
    pa = np.where((p.pred_a < 0) | (p.pred_a >= k), k, p.pred_a)
    pb = np.where((p.pred_b < 0) | (p.pred_b >= k), k, p.pred_b)
    codes = (p.label * w + pa) * w + pb
    present, sizes, _ = _groups(codes, k * w * w)
    g_label, g_a, g_b = present // (w * w), (present // w) % w, present % w

    support_of = stats.GroupSums(g_label, k)
    sums = [
        (stats.GroupSums(g_label, k, g_pred == g_label), stats.GroupSums(g_pred, k, g_pred < k))
        for g_pred in (g_a, g_b)
    ]

    def per_label(counts: np.ndarray, _: np.random.Generator) -> np.ndarray:
        c = counts.astype(np.float64)
        support = support_of(c)
        out = []
        recalls = []
        for tp_of, predicted_of in sums:
            tp = tp_of(c)
            predicted = predicted_of(c)
            out.append(stats.macro_scores(tp, predicted, support))
            recalls.append(stats.ratio(tp, support))
        ma, mb = out
        cols = []
        for i in range(3):
            cols += [ma[:, i], mb[:, i], mb[:, i] - ma[:, i]]
        return np.concatenate([np.stack(cols, axis=1), recalls[1] - recalls[0]], axis=1)

    ivs = stats.bootstrap(per_label, sizes, resamples=resamples, seed=(seed, 3), level=level)
    if k:
        cm_a = _confusion(p.label, pa, k)
        cm_b = _confusion(p.label, pb, k)
        sa = metrics.class_scores(cm_a[:, :k], cm_a[:, k])
        sb = metrics.class_scores(cm_b[:, :k], cm_b[:, k])
        for i, name in enumerate(("precision", "recall", "f1")):
            a_value = float(getattr(sa, f"macro_{name}"))
            b_value = float(getattr(sb, f"macro_{name}"))
            entries.append(_entry(f"macro_{name}", a_value, b_value, ivs[3 * i : 3 * i + 3]))
        support = sa.support
        doc["perClass"] = [
            {
                "label": labels[c],
                "support": int(support[c]),
                "a": float(sa.recall[c]) if support[c] else None,
                "b": float(sb.recall[c]) if support[c] else None,
                "difference": float(sb.recall[c] - sa.recall[c]) if support[c] else None,
                "interval": _interval(ivs[9 + c]),
            }
            for c in range(k)
        ]
    else:
        doc["perClass"] = []

    # ECE: groups (A's bin, A right, B's bin, B right); confidence sums drawn per group.
    bins = metrics.ECE_BINS
    edges = np.linspace(0.0, 1.0, bins + 1)

    def bin_of(score: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(edges[1:-1], score, side="left"), 0, bins - 1)

    ba, bb = bin_of(p.score_a), bin_of(p.score_b)
    codes = ((ba * 2 + ca) * bins + bb) * 2 + cb
    present, sizes, index = _groups(codes, bins * 2 * bins * 2)
    g = len(present)
    e_bin_a, e_ra = present // (2 * bins * 2), (present // (bins * 2)) % 2
    e_bin_b, e_rb = (present // 2) % bins, present % 2
    f = sizes.astype(np.float64)
    mean_a = np.bincount(index, weights=p.score_a, minlength=g) / f
    mean_b = np.bincount(index, weights=p.score_b, minlength=g) / f
    da, db = p.score_a - mean_a[index], p.score_b - mean_b[index]
    var_a = np.bincount(index, weights=da * da, minlength=g) / f
    var_b = np.bincount(index, weights=db * db, minlength=g) / f
    cov = np.bincount(index, weights=da * db, minlength=g) / f
    l11 = np.sqrt(var_a)
    l21 = np.divide(cov, l11, out=np.zeros(g), where=l11 > 0)
    l22 = np.sqrt(np.maximum(var_b - l21 * l21, 0.0))

    by_bin_a, by_bin_b = stats.GroupSums(e_bin_a, bins), stats.GroupSums(e_bin_b, bins)

    def ece(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = counts.astype(np.float64)
        z1 = rng.standard_normal(c.shape)
        z2 = rng.standard_normal(c.shape)
        root = np.sqrt(c)
        conf_a = c * mean_a + root * l11 * z1
        conf_b = c * mean_b + root * (l21 * z1 + l22 * z2)
        a = np.abs(by_bin_a(c * e_ra) - by_bin_a(conf_a))
        b = np.abs(by_bin_b(c * e_rb) - by_bin_b(conf_b))
        ea, eb = a.sum(axis=1) / n, b.sum(axis=1) / n
        return np.stack([ea, eb, eb - ea], axis=1)

    ivs = stats.bootstrap(ece, sizes, resamples=resamples, seed=(seed, 4), level=level)
    entries.append(
        _entry(
            "ece",
            metrics.expected_calibration_error(p.score_a, ca),
            metrics.expected_calibration_error(p.score_b, cb),
            ivs,
        )
    )
    doc["metrics"] = entries
    return doc


def slice_comparison(
    p: Paired,
    attributes: pl.DataFrame,
    by: Sequence[str],
    *,
    resamples: int,
    seed: int,
    level: float = stats.DEFAULT_LEVEL,
) -> dict[str, Any]:
    """Accuracy of A and B per slice of the common rows (the distinct values of the `by`
    attribute columns, crossed), with B - A's paired-bootstrap interval and McNemar's test
    on the slice's rows. `attributes` has `shard` (index into p.shards), `row_id` and the
    `by` columns; a row without attributes is in the null slice."""
    rows = pl.DataFrame({"shard": p.shard, "row_id": p.row_id})
    joined = rows.join(attributes, on=["shard", "row_id"], how="left", maintain_order="left")
    ids, keys = slice_ids(joined, by)  # the same slices as an evaluation's criteria
    ca, cb = p.pred_a == p.label, p.pred_b == p.label
    values = []
    for number, key in zip(
        keys["slice"].to_list(), keys.drop("slice").iter_rows(named=True), strict=True
    ):
        sel = ids == number
        a, b = ca[sel], cb[sel]
        if not len(a):
            continue
        ivs = paired_rates(a, b, resamples=resamples, seed=(seed, 7, number), level=level)
        values.append(
            {
                "key": key,
                "rows": len(a),
                "a": float(a.mean()),
                "b": float(b.mean()),
                "difference": float(b.mean() - a.mean()),
                "interval": _interval(ivs[2]),
                "mcnemarP": stats.mcnemar(a, b).p_value,
            }
        )
    return {"by": list(by), "metric": "accuracy", "values": values}


def _confusion(labels: np.ndarray, predicted: np.ndarray, k: int) -> np.ndarray:
    """(k, k+1): true label x predicted class, the last column predictions outside."""
    flat = np.bincount(labels * (k + 1) + predicted, minlength=k * (k + 1))
    return flat.reshape(k, k + 1)


def flips(p: Paired) -> pl.DataFrame:
    """The rows where exactly one evaluation is right: `fixed` (B right) or `broken`."""
    ca, cb = p.pred_a == p.label, p.pred_b == p.label
    (idx,) = np.nonzero(ca != cb)
    shard_names = np.array(p.shards, dtype=object)
    return pl.DataFrame(
        {
            "kind": np.where(cb[idx], "fixed", "broken"),
            "shard": shard_names[p.shard[idx]] if len(idx) else np.zeros(0, dtype=str),
            "row_id": p.row_id[idx],
            "label": p.label[idx],
            "predicted_a": p.pred_a[idx],
            "score_a": p.score_a[idx],
            "predicted_b": p.pred_b[idx],
            "score_b": p.score_b[idx],
        },
        schema={
            "kind": pl.String,
            "shard": pl.String,
            "row_id": pl.Int64,
            "label": pl.Int32,
            "predicted_a": pl.Int32,
            "score_a": pl.Float32,
            "predicted_b": pl.Int32,
            "score_b": pl.Float32,
        },
    )


# ---------------------------------------------------------- the whole thing


@dataclass(frozen=True)
class Comparison:
    doc: dict[str, Any]
    flips_path: Path

    def flip_rows(self, kind: str | None, offset: int, limit: int) -> tuple[int, pl.DataFrame]:
        """(total, page) of the flipped rows of `kind` (both when None), in row order."""
        if kind is not None and kind not in FLIP_KINDS:
            raise Invalid(f"kind must be one of {', '.join(FLIP_KINDS)}", field="kind")
        if not 0 <= offset <= MAX_OFFSET:
            raise Invalid(f"offset must be between 0 and {MAX_OFFSET}", field="offset")
        if not 1 <= limit <= MAX_LIMIT:
            raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
        lf = pl.scan_parquet(str(self.flips_path), glob=False)
        if kind is not None:
            lf = lf.filter(pl.col("kind") == kind)
        total = int(lf.select(pl.len()).collect().item())
        return total, lf.slice(offset, limit).collect()


def cache_key(
    pairs: Sequence[tuple[str, str, str]],
    labels: list[str],
    top5: bool,
    resamples: int,
    seed: int,
    by: Sequence[str] = (),
) -> str:
    doc = {
        "v": VERSION,
        "by": list(by),
        "pairs": [[a, b] for _, a, b in pairs],
        "labels": labels,
        "top5": top5,
        "resamples": resamples,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def compare(
    blobs: BlobStore,
    a: Side,
    b: Side,
    cache_dir: Path,
    *,
    resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
    by: Sequence[str] = (),
    attributes: dict[str, str] | None = None,
) -> Comparison:
    """Compare two complete evaluations (their `Side`s); cached under cache_dir. With
    `by`, also per slice of those attribute columns; `attributes` maps a shard digest to
    its attribute file's key (the dataset's, `dyff.layout.attributes_key`)."""
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise Invalid(f"resamples must be between 1 and {MAX_RESAMPLES}", field="resamples")
    if not 0 <= seed < 2**63:
        raise Invalid("seed must be between 0 and 2^63-1", field="seed")
    pairs = common_files(a, b)
    if not pairs:
        raise NoCommonRows(
            f"evaluations {a.name!r} and {b.name!r} share no dataset rows "
            "(no dataset shard in common)",
            field="b",
        )
    if a.labels != b.labels:
        raise Invalid(
            f"evaluations {a.name!r} and {b.name!r} have different dataset labels", field="b"
        )
    top5 = a.top5 and b.top5
    if by and (attributes is None or any(s not in attributes for s, _, _ in pairs)):
        raise Invalid(
            f"evaluation {a.name!r}'s dataset keeps no attributes to slice by "
            "(ingested before attributes were kept)",
            field="by",
        )
    key = cache_key(pairs, a.labels, top5, resamples, seed, by)
    folder = cache_dir / "comparisons"
    doc_path, flips_path = folder / f"{key}.json", folder / f"{key}.flips.parquet"
    if doc_path.exists() and flips_path.exists():
        doc = json.loads(doc_path.read_text())
    else:
        paths_a = local_paths(blobs, [x for _, x, _ in pairs], cache_dir)
        paths_b = local_paths(blobs, [x for _, _, x in pairs], cache_dir)
        paired = load_pairs([s for s, _, _ in pairs], paths_a, paths_b, top5=top5)
        if len(paired) == 0:
            raise NoCommonRows(
                f"evaluations {a.name!r} and {b.name!r} share no dataset rows", field="b"
            )
        if paired.label.min() < 0 or paired.label.max() >= len(a.labels):
            raise Conflict(
                f"evaluation {a.name!r} has true label ids outside its dataset's "
                f"{len(a.labels)} labels",
                field="a",
            )
        doc = compute(paired, a.labels, resamples=resamples, seed=seed)
        doc["commonShards"] = len(pairs)
        if by:
            assert attributes is not None
            keys = [attributes[s] for s, _, _ in pairs]
            frames = [
                pl.scan_parquet(str(path), glob=False)
                .select(["row_id", *by])
                .with_columns(shard=pl.lit(i, dtype=pl.Int32))
                for i, path in enumerate(local_paths(blobs, keys, cache_dir))
            ]
            try:
                table = pl.concat(pl.collect_all(frames))
            except pl.exceptions.ColumnNotFoundError:
                raise Invalid(f"the dataset has no attribute {', '.join(by)}", field="by") from None
            doc["slices"] = slice_comparison(paired, table, by, resamples=resamples, seed=seed)
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(flips_path, lambda path: flips(paired).write_parquet(path))
        _atomic_write(doc_path, lambda path: path.write_text(json.dumps(doc)))
    return Comparison(doc={"a": a.info(), "b": b.info(), **doc}, flips_path=flips_path)


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------------- leaderboard

LEADERBOARD_METRICS = ("accuracy", "top5_accuracy", "macro_f1", "ece")
MAX_LEADERBOARD = 100
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Entrant:
    """One evaluation on a leaderboard: its results and what describes it."""

    side: Side
    value: float | None  # the metric on all its rows (metrics.json)
    info: dict[str, Any]  # model, inference settings, ... shown as they are


def _metric_of(doc: dict[str, Any], metric: str) -> dict[str, Any] | None:
    return next((m for m in doc["metrics"] if m["metric"] == metric), None)


def leaderboard(
    blobs: BlobStore,
    entrants: Sequence[Entrant],
    metric: str,
    cache_dir: Path,
    *,
    resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Entrants ranked by `metric` (higher is better; lower for ECE), each with its value, a
    bootstrap interval, and whether it is significantly different from the one ranked just
    above it: for accuracy McNemar's exact test on their common rows (p < 0.05), otherwise
    whether the paired-bootstrap interval of the difference excludes 0. Entrants without the
    metric come last, unranked."""
    if metric not in LEADERBOARD_METRICS:
        raise Invalid(f"metric must be one of {', '.join(LEADERBOARD_METRICS)}", field="metric")
    lower_better = metric == "ece"
    with_value = [e for e in entrants if e.value is not None]
    without = [e for e in entrants if e.value is None]
    with_value.sort(key=lambda e: (e.value if lower_better else -(e.value or 0.0), e.side.name))
    out: list[dict[str, Any]] = []
    previous: Entrant | None = None
    for rank, entrant in enumerate(with_value, start=1):
        own = compare(blobs, entrant.side, entrant.side, cache_dir, resamples=resamples, seed=seed)
        m = _metric_of(own.doc, metric)
        row: dict[str, Any] = {
            "rank": rank,
            **entrant.info,
            "value": entrant.value,
            "interval": m["aInterval"] if m else [None, None],
            "rows": own.doc["rows"],
            "vsPrevious": None,
        }
        if previous is not None:
            row["vsPrevious"] = _versus(
                blobs, previous, entrant, metric, cache_dir, resamples, seed
            )
        out.append(row)
        previous = entrant
    for entrant in without:
        out.append(
            {"rank": None, **entrant.info, "value": None, "interval": [None, None],
             "rows": entrant.side.rows, "vsPrevious": None}
        )  # fmt: skip
    return out


def _versus(
    blobs: BlobStore,
    previous: Entrant,
    entrant: Entrant,
    metric: str,
    cache_dir: Path,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """How `entrant` differs from the one ranked above it, on their common rows."""
    try:
        cmp = compare(blobs, previous.side, entrant.side, cache_dir, resamples=resamples, seed=seed)
    except Invalid as exc:  # no common rows, different labels: no paired test
        return {"evaluation": previous.side.name, "commonRows": 0, "significant": None,
                "detail": exc.message}  # fmt: skip
    m = _metric_of(cmp.doc, metric)
    interval = m["interval"] if m else [None, None]
    p_value = cmp.doc["mcnemar"]["pValue"] if metric == "accuracy" else None
    if p_value is not None:
        significant: bool | None = p_value < SIGNIFICANCE
    elif interval[0] is None or interval[1] is None:
        significant = None
    else:
        significant = not (interval[0] <= 0 <= interval[1])
    return {
        "evaluation": previous.side.name,
        "commonRows": cmp.doc["rows"],
        "difference": m["difference"] if m else None,
        "interval": interval,
        "pValue": p_value,
        "significant": significant,
    }
