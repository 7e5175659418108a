"""`render_comparison`: a paired comparison of two evaluations as one self-contained page.

The input is the comparison document the API serves (`dyff.compare`) and, optionally, pages
of the rows one evaluation fixed or broke. The page has, like the evaluation report, inline
CSS, inline SVG and no script: a difference chart (B - A per metric, a dot and its 95 %
interval, a line at 0), the McNemar table with its exact p-value, per-class recall
differences with intervals, and the flipped rows. Sections carry stable ids:
`#summary`, `#differences`, `#mcnemar`, `#per-class-differences`, `#flips`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dyff import shard_lists
from dyff.report import charts
from dyff.report.page import _env, dec
from dyff.report.sources import shard_images
from dyff.report.thumbnails import thumbnail_data_uri
from dyff.schema import Dataset, Evaluation
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

METRIC_NAMES = {
    "accuracy": "Accuracy",
    "top5_accuracy": "Top-5 accuracy",
    "macro_precision": "Macro precision",
    "macro_recall": "Macro recall",
    "macro_f1": "Macro F1",
    "ece": "ECE (lower is better)",
}
ROW_PITCH = 26.0
LABEL_ROOM = 170.0
PLOT_WIDTH = 520.0
TOP = 24.0


@dataclass(frozen=True)
class ForestRow:
    name: str
    full: str
    y: float
    x: float | None  # the difference
    lo: float | None
    hi: float | None
    text: str  # "+0.012 [+0.004, +0.020]"
    tone: str  # "up", "down" or "flat": the interval says B better, worse, or either


@dataclass(frozen=True)
class Forest:
    width: float
    height: float
    x0: float
    x1: float
    zero: float
    ticks: list[charts.Tick]
    rows: list[ForestRow]


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
        return None
    return float(v)


def forest(
    items: Sequence[tuple[str, Any, Sequence[Any]]], lower_better: Sequence[str] = ()
) -> Forest:
    """A forest plot of differences with intervals: (name, difference, [low, high]). The
    interval's side of 0 colours a row: B better (up), worse (down) or either (flat); for
    the names in `lower_better` a difference below 0 is better."""
    values = [
        v for _, d, iv in items for v in (_finite(d), *(_finite(x) for x in iv)) if v is not None
    ]
    reach = max([abs(v) for v in values] + [1e-3]) * 1.1
    ticks, step = charts.nice_ticks(-reach, reach, 6)
    lo_v, hi_v = min(ticks[0], -reach), max(ticks[-1], reach)
    x0, x1 = LABEL_ROOM, LABEL_ROOM + PLOT_WIDTH

    def x(v: float) -> float:
        return x0 + (v - lo_v) / (hi_v - lo_v) * (x1 - x0)

    digits = charts.decimals(step)
    tick_marks = [charts.Tick(t, x(t), f"{t:+.{digits}f}" if t else "0") for t in ticks]
    rows = []
    for i, (name, diff, interval) in enumerate(items):
        d = _finite(diff)
        lo, hi = (_finite(interval[0]), _finite(interval[1])) if interval else (None, None)
        tone = "flat"
        if lo is not None and hi is not None:
            tone = "up" if lo > 0 else ("down" if hi < 0 else "flat")
            if name in lower_better and tone != "flat":
                tone = "down" if tone == "up" else "up"
        text = "—" if d is None else f"{d:+.4f}"
        if lo is not None and hi is not None:
            text += f" [{lo:+.4f}, {hi:+.4f}]"
        rows.append(
            ForestRow(
                name=charts.shorten(name, 24),
                full=name,
                y=TOP + (i + 0.5) * ROW_PITCH,
                x=None if d is None else x(d),
                lo=None if lo is None else x(lo),
                hi=None if hi is None else x(hi),
                text=text,
                tone=tone,
            )
        )
    height = TOP + len(items) * ROW_PITCH + 30
    return Forest(x1 + 190, height, x0, x1, x(0.0), tick_marks, rows)


def render_comparison(
    doc: Mapping[str, Any],
    flipped: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    title: str | None = None,
) -> str:
    """A self-contained HTML page of a comparison document (`GET /v1/comparisons`);
    `flipped` maps "fixed"/"broken" to pages of `GET /v1/comparisons/rows`."""
    a, b = doc.get("a") or {}, doc.get("b") or {}
    labels = [str(x) for x in doc.get("labels") or []]
    metrics = list(doc.get("metrics") or [])
    # ECE is better when lower: its row is B - A as measured, coloured by what is better.
    differences = forest(
        [(METRIC_NAMES.get(m["metric"], m["metric"]), m["difference"], m["interval"])
         for m in metrics],
        lower_better=[METRIC_NAMES["ece"]],
    )  # fmt: skip
    per_class = forest(
        [(p["label"], p["difference"], p["interval"]) for p in doc.get("perClass") or []]
    )

    def label(v: Any) -> str:
        return labels[v] if isinstance(v, int) and 0 <= v < len(labels) else str(v)

    flips = {
        kind: {
            "total": (flipped or {}).get(kind, {}).get("total", 0),
            "rows": [
                {
                    "row_id": r.get("row_id"),
                    "label": label(r.get("label")),
                    "a": label(r.get("predicted_a")),
                    "b": label(r.get("predicted_b")),
                    "score_a": dec(r.get("score_a")),
                    "score_b": dec(r.get("score_b")),
                    "thumb": thumbnail_data_uri(r.get("image")),
                }
                for r in (flipped or {}).get(kind, {}).get("rows", [])
            ],
        }
        for kind in ("fixed", "broken")
    }
    return (
        _env()
        .get_template("comparison.html.j2")
        .render(
            title=title or f"Comparison: {b.get('name', 'B')} against {a.get('name', 'A')}",
            a=a,
            b=b,
            doc=doc,
            metrics=[{**m, "title": METRIC_NAMES.get(m["metric"], m["metric"])} for m in metrics],
            mcnemar=doc.get("mcnemar") or {},
            differences=differences,
            per_class=per_class,
            per_class_rows=doc.get("perClass") or [],
            flips=flips if flipped is not None else None,
        )
    )


def add_images(
    records: RecordStore,
    blobs: BlobStore,
    evaluation: Evaluation,
    rows: Sequence[dict[str, Any]],
    cache_dir: Path,
) -> None:
    """Set each flipped row's `image` (encoded bytes, or None) from the shard of its
    evaluation's dataset that holds it: only shards the dataset lists, only those rows."""
    ref = evaluation.spec.dataset
    dataset = records.find(Dataset, ref.account or evaluation.account, ref.name)
    known = {s.sha256 for s in shard_lists.listed_shards(blobs, [dataset] if dataset else [])}
    wanted: dict[str, list[int]] = {}
    for row in rows:
        row["image"] = None
        if row.get("shard") in known:
            wanted.setdefault(row["shard"], []).append(int(row["row_id"]))
    if dataset is None or not wanted:
        return
    images: dict[tuple[str, int], bytes] = {}
    for shard, ids in wanted.items():
        found = shard_images(blobs, dataset.account, shard, ids, cache_dir)
        images.update(((shard, rid), image) for rid, image in found.items())
    for row in rows:
        row["image"] = images.get((str(row.get("shard")), int(row["row_id"])))
