"""An evaluation's results as one self-contained HTML page.

`render_report` turns an evaluation record, its metrics document
(`dyff.metrics.compute`) and its most confident errors (with the images of
those rows) into a page that needs nothing else: inline CSS, charts drawn
here as inline SVG, thumbnails as base64 `data:` URIs, and no script at all.
It can be mailed, archived or opened offline and shows the same thing
everywhere.

Every piece of text that comes from users (names, class labels) is escaped;
labels come straight from uploaded data.

Sections carry stable ids for tests and links: `#summary`, `#metrics-table`,
`#reliability`, `#confusion-matrix`, `#per-class`, `#confident-errors`. A
metric that was not requested keeps its section with a "not computed" note.

`build_report` gathers the inputs from the stores: the Evaluation record,
metrics.json, the prediction files of its manifest and the dataset rows of
the errors (only the shards holding those rows, only those rows).
"""

from __future__ import annotations

import base64
import bisect
import html
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dyff import layout, results
from dyff.errors import Conflict, DyffError
from dyff.schema import Dataset, Evaluation
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

log = logging.getLogger("dyff.report")

THUMB_PX = 96
ERRORS_SHOWN = 12
PRECISION_COLOUR = "#4c78a8"
RECALL_COLOUR = "#f58518"
ACCURACY_COLOUR = "#4c78a8"
GAP_COLOUR = "#e45756"
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
# ColorBrewer "Blues", light to dark.
BLUES = (
    "#f7fbff",
    "#deebf7",
    "#c6dbef",
    "#9ecae1",
    "#6baed6",
    "#4292c6",
    "#2171b5",
    "#08519c",
    "#08306b",
)
NOT_COMPUTED = '<p class="note">Not computed for this evaluation.</p>'


# ------------------------------------------------------------------ helpers


def _e(value: Any) -> str:
    """Escaped text, safe in element content and in quoted attributes (HTML and SVG)."""
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def _pct(value: Any, digits: int = 1) -> str:
    v = _num(value)
    return "—" if v is None else f"{v * 100:.{digits}f}%"


def _dec(value: Any, digits: int = 3) -> str:
    v = _num(value)
    return "—" if v is None else f"{v:.{digits}f}"


def _short(text: str, limit: int = 14) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _compact(n: int) -> str:
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k".replace(".0k", "k")
    return f"{n / 1_000_000:.1f}M".replace(".0M", "M")


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(c):02x}" for c in rgb)


def _blues(t: float) -> str:
    """A colour of the Blues scale, `t` in [0, 1]."""
    t = min(1.0, max(0.0, t))
    pos = t * (len(BLUES) - 1)
    i = min(int(pos), len(BLUES) - 2)
    frac = pos - i
    a = [int(BLUES[i][k : k + 2], 16) for k in (1, 3, 5)]
    b = [int(BLUES[i + 1][k : k + 2], 16) for k in (1, 3, 5)]
    return _hex([x + (y - x) * frac for x, y in zip(a, b, strict=True)])


def _label_namer(labels: Sequence[str]) -> Any:
    def name(i: Any) -> str:
        if isinstance(i, int) and 0 <= i < len(labels):
            return str(labels[i])
        return str(i)

    return name


def _dig(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _svg(width: float, height: float, body: str, label: str) -> str:
    return (
        f'<svg class="chart" role="img" aria-label="{_e(label)}" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">{body}</svg>'
    )


def _axis_labels(
    names: Sequence[str], step: float, start: float, baseline: float, font: float
) -> tuple[str, float]:
    """Class names under a horizontal axis, centred on `start + (i + .5) * step`.

    Every k-th name when they are too dense; rotated when they do not fit side
    by side. Returns the SVG and the height the labels take below `baseline`.
    """
    n = len(names)
    every = max(1, math.ceil((font + 2) / step))
    shown = [(i, _short(names[i])) for i in range(0, n, every)]
    longest = max((len(s) for _, s in shown), default=1)
    text_w = longest * font * 0.62
    parts = []
    if text_w <= step * every - 4:
        for i, s in shown:
            x = start + (i + 0.5) * step
            parts.append(
                f'<text x="{x:.1f}" y="{baseline + font + 4:.1f}" text-anchor="middle" '
                f'font-size="{font:.1f}"><title>{_e(names[i])}</title>{_e(s)}</text>'
            )
        return "".join(parts), font + 8
    # Rotated by 45° while the slanted names keep apart, else upright (90°).
    angle = 45 if step * every * 0.7 >= font + 1 else 90
    for i, s in shown:
        x = start + (i + 0.5) * step
        y = baseline + 6
        parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="end" dominant-baseline="central" '
            f'font-size="{font:.1f}" transform="rotate(-{angle} {x:.1f} {y:.1f})">'
            f"<title>{_e(names[i])}</title>{_e(s)}</text>"
        )
    reach = text_w * (0.71 if angle == 45 else 1.0)
    return "".join(parts), reach + font + 10


# ------------------------------------------------------------------ sections


def _header(doc: dict[str, Any], metrics: dict[str, Any], title: str) -> str:
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    status = doc.get("status") or {}
    account = meta.get("namespace") or ""

    def ref(which: str) -> str:
        r = spec.get(which) or {}
        owner = r.get("account")
        name = f"<strong>{_e(r.get('name') or '?')}</strong>"
        return name + (f' <span class="muted">({_e(owner)})</span>' if owner else "")

    facts = [
        f"Evaluation <strong>{_e(meta.get('name') or '?')}</strong>"
        + (f' <span class="muted">in account {_e(account)}</span>' if account else ""),
        f"Model {ref('model')}",
        f"Dataset {ref('dataset')}",
    ]
    details = []
    if status.get("phase"):
        details.append(f'<span class="badge">{_e(status["phase"])}</span>')
    if meta.get("creationTimestamp"):
        details.append(f"created {_e(meta['creationTimestamp'])}")
    if status.get("modelDigest"):
        details.append(f"model digest <code>{_e(str(status['modelDigest'])[:19])}</code>")
    if meta.get("uid"):
        details.append(f"uid <code>{_e(meta['uid'])}</code>")

    rows = _num(metrics.get("rows"))
    top5_hint = "true label among the top 5"
    if metrics.get("top5Omitted"):
        top5_hint = "n/a: the model has at most 5 classes"
    elif "top5Accuracy" not in metrics:
        top5_hint = "not computed"
    elif metrics["top5Accuracy"] is None:
        top5_hint = "n/a: fewer than 5 labels kept"
    headline = (
        ("accuracy", "Accuracy", _pct(metrics.get("accuracy")), "top-1"),
        ("top5Accuracy", "Top-5 accuracy", _pct(metrics.get("top5Accuracy")), top5_hint),
        ("macroF1", "Macro F1", _dec(_dig(metrics, "macro", "f1")), "mean over classes"),
        ("ece", "ECE", _dec(metrics.get("ece")), "15 bins, lower is better"),
        ("rows", "Rows", "—" if rows is None else f"{int(rows):,}", "predictions scored"),
    )
    cards = []
    for key, label, value, hint in headline:
        if value == "—" and key != "top5Accuracy":
            hint = "not computed"
        cards.append(
            f'<div class="card" data-metric="{key}"><div class="card-label">{label}</div>'
            f'<div class="card-value">{value}</div><div class="card-hint">{_e(hint)}</div></div>'
        )
    return (
        f'<header id="summary"><h1>{_e(title)}</h1>'
        f'<p class="facts">{" · ".join(facts)}</p>'
        + (f'<p class="details">{" · ".join(details)}</p>' if details else "")
        + f'<div class="cards">{"".join(cards)}</div></header>'
    )


def _metrics_table(metrics: dict[str, Any]) -> str:
    macro = metrics.get("macro") or {}
    entries: list[tuple[str, str, str]] = []
    if "rows" in metrics:
        entries.append(("Rows evaluated", f"{int(metrics['rows']):,}", "Predictions scored."))
    if "labels" in metrics:
        entries.append(("Classes", str(len(metrics["labels"])), "Labels the dataset defines."))
    if "accuracy" in metrics:
        entries.append(
            (
                "Accuracy (top-1)",
                _pct(metrics["accuracy"], 2),
                "Share of rows whose top prediction is the true label.",
            )
        )
    if "top5Accuracy" in metrics:
        top5 = metrics["top5Accuracy"]
        entries.append(
            (
                "Top-5 accuracy",
                "n/a" if top5 is None else _pct(top5, 2),
                "Share of rows whose true label is among the five best predictions."
                + (" Too few labels were kept per prediction." if top5 is None else ""),
            )
        )
    if metrics.get("top5Omitted"):
        entries.append(("Top-5 accuracy", "n/a", _e(str(metrics["top5Omitted"]).capitalize())))
    if metrics.get("predictedOutsideLabels"):
        extra = [str(x) for x in metrics.get("extraLabels") or []]
        shown = ", ".join(extra[:10]) + (", …" if len(extra) > 10 else "")
        entries.append(
            (
                "Predicted outside the dataset's labels",
                f"{int(metrics['predictedOutsideLabels']):,}",
                "Rows predicted as a model label the dataset lacks"
                + (f" ({_e(shown)})" if extra else "")
                + "; counted as wrong.",
            )
        )
    for key, label in (("precision", "Precision"), ("recall", "Recall"), ("f1", "F1")):
        if key in macro:
            entries.append(
                (
                    f"Macro {label if key == 'f1' else key}",
                    _dec(macro[key]),
                    f"{label}, averaged over classes.",
                )
            )
    if "ece" in metrics:
        bins = _dig(metrics, "calibration", "bins") or 15
        entries.append(
            (
                "Expected calibration error",
                _dec(metrics["ece"], 4),
                f"Mean gap between confidence and accuracy over {_e(bins)} bins, "
                "weighted by rows; 0 is perfectly calibrated.",
            )
        )
    if not entries:
        body = NOT_COMPUTED
    else:
        rows = "".join(
            f'<tr><th scope="row">{name}</th><td class="num">{value}</td>'
            f'<td class="muted">{note}</td></tr>'
            for name, value, note in entries
        )
        body = (
            '<table id="metrics-table" class="table"><thead><tr><th>Metric</th>'
            f'<th class="num">Value</th><th>Meaning</th></tr></thead><tbody>{rows}</tbody></table>'
        )
    return f'<section id="metrics"><h2>Metrics</h2>{body}</section>'


def _confusion_svg(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    n = len(matrix)
    names = [str(labels[i]) if i < len(labels) else str(i) for i in range(n)]
    cell = max(4.0, min(48.0, math.floor(800 / max(n, 1))))
    side = cell * n
    font = 11.0 if cell >= 12 else 9.0
    every = max(1, math.ceil((font + 2) / cell))
    longest = max((len(_short(names[i])) for i in range(0, n, every)), default=1)
    left = longest * font * 0.62 + 44
    top = 12.0
    peak = max((max(row, default=0) for row in matrix), default=0)
    digits = len(str(peak))
    count_font = min(12.0, (cell - 6) / (0.62 * digits))
    show_counts = count_font >= 7.5
    stroke = ' stroke="#ffffff" stroke-width="1"' if cell >= 10 else ""

    parts = [
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{side:.1f}" height="{side:.1f}" '
        f'fill="{BLUES[0]}" stroke="{GRID}"/>'
    ]
    for t, row in enumerate(matrix):
        total = sum(row)
        for p, count in enumerate(row):
            if count <= 0:
                continue
            share = count / total
            x, y = left + p * cell, top + t * cell
            parts.append(
                f'<rect class="cell" x="{x:.1f}" y="{y:.1f}" width="{cell:.1f}" '
                f'height="{cell:.1f}" fill="{_blues(share)}"{stroke}>'
                f"<title>true {_e(names[t])} → predicted {_e(names[p])}: {count:,} "
                f"({share * 100:.1f}% of {_e(names[t])})</title></rect>"
            )
            if show_counts:
                colour = "#ffffff" if share > 0.55 else INK
                parts.append(
                    f'<text class="cell-count" x="{x + cell / 2:.1f}" y="{y + cell / 2:.1f}" '
                    'text-anchor="middle" '
                    f'dominant-baseline="central" font-size="{count_font:.1f}" fill="{colour}" '
                    f'pointer-events="none">{count}</text>'
                )
    # Row labels (true class), every k-th when dense.
    for t in range(0, n, every):
        y = top + (t + 0.5) * cell
        parts.append(
            f'<text x="{left - 6:.1f}" y="{y:.1f}" text-anchor="end" dominant-baseline="central" '
            f'font-size="{font:.1f}"><title>{_e(names[t])}</title>{_e(_short(names[t]))}</text>'
        )
    cols, col_h = _axis_labels(names, cell, left, top + side, font)
    parts.append(cols)
    bottom = top + side + col_h
    parts.append(
        f'<text class="axis-title" x="{left + side / 2:.1f}" y="{bottom + 14:.1f}" '
        f'text-anchor="middle">Predicted label</text>'
    )
    parts.append(
        f'<text class="axis-title" x="14" y="{top + side / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + side / 2:.1f})">True label</text>'
    )
    # Colour bar: share of the true class's rows.
    bar_x = left + side + 28
    stops = "".join(
        f'<stop offset="{i / (len(BLUES) - 1):.3f}" stop-color="{c}"/>'
        for i, c in enumerate(reversed(BLUES))
    )
    bar_h = min(side, 240.0)
    parts.append(
        f'<defs><linearGradient id="cm-scale" x1="0" y1="0" x2="0" y2="1">{stops}'
        "</linearGradient></defs>"
        f'<rect x="{bar_x:.1f}" y="{top:.1f}" width="14" height="{bar_h:.1f}" '
        f'fill="url(#cm-scale)" stroke="{GRID}"/>'
    )
    for frac, text in ((0.0, "100%"), (0.5, "50%"), (1.0, "0%")):
        y = top + frac * bar_h
        parts.append(
            f'<line x1="{bar_x + 14:.1f}" x2="{bar_x + 18:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{MUTED}"/><text x="{bar_x + 21:.1f}" y="{y:.1f}" font-size="10" '
            f'dominant-baseline="central" fill="{MUTED}">{text}</text>'
        )
    parts.append(
        f'<text x="{bar_x + 56:.1f}" y="{top + bar_h / 2:.1f}" font-size="10" fill="{MUTED}" '
        f'text-anchor="middle" transform="rotate(90 {bar_x + 56:.1f} {top + bar_h / 2:.1f})">'
        "share of the true class</text>"
    )
    width = bar_x + 70
    height = bottom + 24
    return _svg(width, height, "".join(parts), "Confusion matrix")


def _confusion_section(metrics: dict[str, Any]) -> str:
    matrix = metrics.get("confusionMatrix")
    if not matrix:
        body = NOT_COMPUTED
    else:
        n = len(matrix)
        note = (
            "Rows are true labels, columns predicted labels; each cell shows how many rows "
            "of its true class got that prediction, shaded by the share of the class."
        )
        if n > 25:
            note += " Counts are hidden at this size: hover a cell for its count."
        svg = _confusion_svg(metrics.get("labels") or [], matrix)
        body = f'<p class="note">{note}</p><div class="scroll">{svg}</div>'
    return f'<section id="confusion-matrix"><h2>Confusion matrix</h2>{body}</section>'


def _per_class_svg(per_class: Sequence[dict[str, Any]], series: list[tuple[str, str, str]]) -> str:
    n = len(per_class)
    names = [str(c.get("label", i)) for i, c in enumerate(per_class)]
    group = max(8.0, min(72.0, math.floor(1040 / max(n, 1))))
    left, top, plot_h = 44.0, 30.0, 220.0
    width_plot = group * n
    bar_w = group * 0.8 / len(series)
    parts = []
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - tick)
        parts.append(
            f'<line x1="{left:.1f}" x2="{left + width_plot:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID if tick else "#9ca3af"}"/>'
            f'<text x="{left - 6:.1f}" y="{y:.1f}" text-anchor="end" dominant-baseline="central" '
            f'font-size="10" fill="{MUTED}">{tick:.2f}</text>'
        )
    for i, cls in enumerate(per_class):
        x0 = left + i * group + group * 0.1
        for j, (key, label, colour) in enumerate(series):
            value = _num(cls.get(key)) or 0.0
            h = plot_h * min(1.0, max(0.0, value))
            parts.append(
                f'<rect class="bar bar-{key}" x="{x0 + j * bar_w:.1f}" y="{top + plot_h - h:.1f}" '
                f'width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{_e(names[i])}: {label.lower()} {value:.3f}</title></rect>"
            )
    font = 11.0 if group >= 14 else 9.0
    xlabels, label_h = _axis_labels(names, group, left, top + plot_h, font)
    parts.append(xlabels)
    # Legend, top left above the plot.
    lx = left
    for _key, label, colour in series:
        parts.append(
            f'<rect x="{lx:.1f}" y="6" width="12" height="12" rx="2" fill="{colour}"/>'
            f'<text x="{lx + 17:.1f}" y="12" dominant-baseline="central" font-size="12">'
            f"{label}</text>"
        )
        lx += 17 + len(label) * 7.5 + 18
    width = left + max(width_plot, 200.0) + 10
    return _svg(width, top + plot_h + label_h + 6, "".join(parts), "Per-class precision and recall")


def _per_class_section(metrics: dict[str, Any]) -> str:
    per_class = metrics.get("perClass") or []
    heading = "<h2>Per-class precision and recall</h2>"
    present = [k for k in ("precision", "recall") if any(k in c for c in per_class)]
    if not per_class:
        return f'<section id="per-class">{heading}{NOT_COMPUTED}</section>'
    colours = {"precision": PRECISION_COLOUR, "recall": RECALL_COLOUR}
    series = [(k, k.capitalize(), colours[k]) for k in present]
    chart = (
        f'<div class="scroll">{_per_class_svg(per_class, series)}</div>' if series else NOT_COMPUTED
    )
    columns = [
        k for k in ("support", "precision", "recall", "f1") if any(k in c for c in per_class)
    ]
    head = "".join(f'<th class="num">{"F1" if k == "f1" else k.capitalize()}</th>' for k in columns)
    rows = []
    for c in per_class:
        cells = "".join(
            f'<td class="num">{c[k]:,}</td>'
            if k == "support" and isinstance(c.get(k), int)
            else f'<td class="num">{_dec(c.get(k))}</td>'
            for k in columns
        )
        rows.append(f'<tr><th scope="row">{_e(c.get("label", ""))}</th>{cells}</tr>')
    open_attr = " open" if len(per_class) <= 12 else ""
    table = (
        f"<details{open_attr}><summary>Table of {len(per_class)} classes</summary>"
        f'<table id="per-class-table" class="table compact"><thead><tr><th>Class</th>{head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></details>"
    )
    return (
        f'<section id="per-class"><h2>Per-class precision and recall</h2>{chart}{table}</section>'
    )


def _reliability_svg(cal: dict[str, Any], ece: float | None) -> str:
    counts = [int(c) for c in cal.get("counts") or []]
    conf = list(cal.get("confidence") or [])
    acc = list(cal.get("accuracy") or [])
    bins = len(counts)
    left, top, size = 48.0, 12.0, 300.0
    hist_gap, hist_h = 34.0, 64.0
    bw = size / bins
    parts = []
    for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        y = top + size * (1 - tick)
        x = left + size * tick
        parts.append(
            f'<line x1="{left:.1f}" x2="{left + size:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID}"/>'
            f'<text x="{left - 6:.1f}" y="{y:.1f}" text-anchor="end" dominant-baseline="central" '
            f'font-size="10" fill="{MUTED}">{tick:.1f}</text>'
        )
        hist_base = top + size + hist_gap + hist_h
        parts.append(
            f'<text x="{x:.1f}" y="{hist_base + 14:.1f}" text-anchor="middle" font-size="10" '
            f'fill="{MUTED}">{tick:.1f}</text>'
        )
    for b in range(bins):
        if counts[b] <= 0:
            continue
        a = min(1.0, max(0.0, float(acc[b]) if b < len(acc) else 0.0))
        c = min(1.0, max(0.0, float(conf[b]) if b < len(conf) else 0.0))
        x = left + b * bw
        y_acc = top + size * (1 - a)
        parts.append(
            f'<rect class="bin" x="{x + 1:.1f}" y="{y_acc:.1f}" width="{bw - 2:.1f}" '
            f'height="{top + size - y_acc:.1f}" fill="{ACCURACY_COLOUR}" fill-opacity="0.85">'
            f"<title>confidence {b / bins:.2f} to {(b + 1) / bins:.2f}: {counts[b]:,} rows, "
            f"accuracy {a:.3f}, mean confidence {c:.3f}</title></rect>"
        )
        y_conf = top + size * (1 - c)
        lo, hi = sorted((y_acc, y_conf))
        if hi - lo > 0.5:
            parts.append(
                f'<rect class="gap" x="{x + 1:.1f}" y="{lo:.1f}" width="{bw - 2:.1f}" '
                f'height="{hi - lo:.1f}" fill="{GAP_COLOUR}" fill-opacity="0.28" '
                f'stroke="{GAP_COLOUR}" stroke-width="1"/>'
            )
    parts.append(
        f'<line x1="{left:.1f}" y1="{top + size:.1f}" x2="{left + size:.1f}" y2="{top:.1f}" '
        f'stroke="{INK}" stroke-width="1.2" stroke-dasharray="5 4"/>'
        f'<rect x="{left:.1f}" y="{top:.1f}" width="{size:.1f}" height="{size:.1f}" '
        f'fill="none" stroke="#9ca3af"/>'
    )
    parts.append(
        f'<text class="axis-title" x="14" y="{top + size / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + size / 2:.1f})">Accuracy</text>'
    )
    # Rows per bin, same x scale.
    hist_top = top + size + hist_gap
    peak = max(counts, default=0) or 1
    parts.append(
        f'<text x="{left:.1f}" y="{hist_top - 10:.1f}" font-size="10" fill="{MUTED}">'
        "Rows per bin</text>"
    )
    for b, count in enumerate(counts):
        if count <= 0:
            continue
        h = max(1.0, hist_h * count / peak)
        x = left + b * bw
        parts.append(
            f'<rect class="count" x="{x + 1:.1f}" y="{hist_top + hist_h - h:.1f}" '
            f'width="{bw - 2:.1f}" height="{h:.1f}" fill="#9ca3af">'
            f"<title>{count:,} rows</title></rect>"
        )
        if bw >= 16:
            parts.append(
                f'<text x="{x + bw / 2:.1f}" y="{hist_top + hist_h - h - 3:.1f}" '
                f'text-anchor="middle" font-size="8.5" fill="{MUTED}">{_compact(count)}</text>'
            )
    parts.append(
        f'<line x1="{left:.1f}" x2="{left + size:.1f}" y1="{hist_top + hist_h:.1f}" '
        f'y2="{hist_top + hist_h:.1f}" stroke="#9ca3af"/>'
    )
    bottom = hist_top + hist_h + 18
    parts.append(
        f'<text class="axis-title" x="{left + size / 2:.1f}" y="{bottom + 14:.1f}" '
        f'text-anchor="middle">Confidence (top-1 score)</text>'
    )
    # Legend, right of the plot.
    lx, ly = left + size + 18, top + 8
    legend = [
        (
            f'<rect x="{lx:.1f}" y="{ly:.1f}" width="12" height="12" fill="{ACCURACY_COLOUR}"/>',
            "Accuracy",
        ),
        (
            f'<rect x="{lx:.1f}" y="{ly + 22:.1f}" width="12" height="12" fill="{GAP_COLOUR}" '
            f'fill-opacity="0.28" stroke="{GAP_COLOUR}"/>',
            "Gap to confidence",
        ),
        (
            f'<line x1="{lx:.1f}" x2="{lx + 12:.1f}" y1="{ly + 56:.1f}" y2="{ly + 44:.1f}" '
            f'stroke="{INK}" stroke-dasharray="3 2"/>',
            "Perfect calibration",
        ),
    ]
    for k, (mark, text) in enumerate(legend):
        parts.append(
            f'{mark}<text x="{lx + 18:.1f}" y="{ly + 6 + 22 * k:.1f}" dominant-baseline="central" '
            f'font-size="11">{text}</text>'
        )
    if ece is not None:
        parts.append(
            f'<text x="{lx:.1f}" y="{ly + 90:.1f}" font-size="12" font-weight="600">'
            f"ECE {ece:.4f}</text>"
        )
    return _svg(lx + 130, bottom + 22, "".join(parts), "Reliability diagram")


def _reliability_section(metrics: dict[str, Any]) -> str:
    cal = metrics.get("calibration")
    if not isinstance(cal, dict) or not cal.get("counts"):
        body = NOT_COMPUTED
    else:
        body = (
            '<p class="note">Accuracy of the rows in each confidence bin; bars under the '
            "diagonal are over-confident, bars above it under-confident.</p>"
            + _reliability_svg(cal, _num(metrics.get("ece")))
        )
    return f'<section id="reliability"><h2>Reliability diagram</h2>{body}</section>'


def thumbnail_data_uri(data: bytes | None, size: int = THUMB_PX) -> tuple[str, int, int] | None:
    """A PNG data URI of the image scaled to fit `size` pixels, and its width and height.

    Small images are enlarged by a whole factor with nearest-neighbour sampling
    (an 8x8 digit stays crisp pixels, not a blur); larger ones are shrunk with a
    Lanczos filter. None when the bytes do not decode.
    """
    if not data:
        return None
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            im = ImageOps.exif_transpose(opened)
            im.load()
    except Exception as exc:  # any decoder error: show a placeholder instead
        log.warning("image does not decode: %s", exc)
        return None
    if im.mode not in ("RGB", "RGBA", "L", "LA"):
        im = im.convert("RGBA" if "transparency" in im.info or "A" in im.mode else "RGB")
    longest = max(im.size)
    if longest < size:
        factor = max(1, size // longest)
        im = im.resize((im.width * factor, im.height * factor), Image.Resampling.NEAREST)
    else:
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return uri, im.width, im.height


def _errors_section(errors: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    name = _label_namer(labels)
    if not errors:
        body = '<p class="note">No wrong predictions to show.</p>'
        return f'<section id="confident-errors"><h2>Most confident errors</h2>{body}</section>'
    cards = []
    for row in errors:
        thumb = thumbnail_data_uri(row.get("image"))
        if thumb is None:
            picture = '<div class="thumb missing">image unavailable</div>'
        else:
            uri, w, h = thumb
            picture = (
                f'<div class="thumb"><img src="{uri}" width="{w}" height="{h}" '
                f'alt="row {_e(row.get("row_id"))}"></div>'
            )
        score = _num(row.get("score"))
        meter = (
            ""
            if score is None
            else f'<div class="meter"><span style="width:{min(1.0, max(0.0, score)) * 100:.0f}%">'
            "</span></div>"
        )
        cards.append(
            f'<figure class="error">{picture}<figcaption>'
            f'<div class="row-id">row {_e(row.get("row_id"))}</div>'
            f'<div><span class="muted">true</span> <span class="true">'
            f"{_e(name(row.get('label')))}</span></div>"
            f'<div><span class="muted">predicted</span> <span class="pred">'
            f"{_e(name(row.get('predicted')))}</span></div>"
            f'<div><span class="muted">score</span> {_dec(score)}</div>{meter}'
            "</figcaption></figure>"
        )
    body = (
        '<p class="note">The wrong predictions the model was surest of, most confident first.</p>'
        f'<div class="errors">{"".join(cards)}</div>'
    )
    return f'<section id="confident-errors"><h2>Most confident errors</h2>{body}</section>'


CSS = f"""
*{{box-sizing:border-box}}
body{{margin:0;background:#f3f4f6;color:{INK};font:14px/1.5 "Inter","Segoe UI",Roboto,
"Helvetica Neue",Arial,"Liberation Sans","DejaVu Sans",sans-serif}}
main{{max-width:1180px;margin:0 auto;padding:28px 24px 48px}}
header,section{{background:#fff;border:1px solid {GRID};border-radius:10px;padding:20px 24px;
margin-bottom:18px;box-shadow:0 1px 2px rgba(0,0,0,.04)}}
h1{{font-size:24px;margin:0 0 6px;font-weight:650;letter-spacing:-.01em}}
h2{{font-size:17px;margin:0 0 10px;font-weight:600}}
.facts{{margin:0;font-size:15px}} .details{{margin:4px 0 0;color:{MUTED};font-size:13px}}
.muted{{color:{MUTED}}} .note{{color:{MUTED};margin:0 0 12px;font-size:13px}}
code{{font:12px/1.4 "DejaVu Sans Mono",Menlo,Consolas,monospace;background:#f3f4f6;
padding:1px 4px;border-radius:4px}}
.badge{{display:inline-block;padding:1px 8px;border-radius:999px;background:#dcfce7;
color:#166534;font-weight:600;font-size:12px}}
.cards{{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px;
margin-top:16px}}
.card{{border:1px solid {GRID};border-radius:8px;padding:12px 14px;background:#fafafa}}
.card-label{{font-size:12px;color:{MUTED};text-transform:uppercase;letter-spacing:.05em}}
.card-value{{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums;margin:2px 0}}
.card-hint{{font-size:12px;color:{MUTED}}}
.grid2{{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:18px}}
.grid2>section{{margin-bottom:18px}}
.table{{border-collapse:collapse;width:100%;font-size:13px}}
.table th,.table td{{text-align:left;padding:7px 10px;border-bottom:1px solid {GRID};
vertical-align:top}}
.table thead th{{font-size:12px;color:{MUTED};font-weight:600;text-transform:uppercase;
letter-spacing:.04em;border-bottom:2px solid {GRID}}}
.table tbody th{{font-weight:600;white-space:nowrap}}
.table .num{{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}}
.table.compact th,.table.compact td{{padding:3px 10px}}
.table.compact{{max-width:640px}}
details{{margin-top:12px}} summary{{cursor:pointer;color:{MUTED};font-size:13px}}
.scroll{{overflow-x:auto}}
svg.chart{{display:block;max-width:none;font-family:inherit;fill:{INK}}}
svg .axis-title{{font-size:12px;fill:{MUTED}}}
.errors{{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:14px}}
figure.error{{margin:0;border:1px solid {GRID};border-radius:8px;padding:10px;background:#fafafa}}
.thumb{{height:{THUMB_PX + 8}px;display:flex;align-items:center;justify-content:center;
background:#fff;border:1px solid {GRID};border-radius:6px;margin-bottom:8px}}
.thumb img{{image-rendering:pixelated;display:block}}
.thumb.missing{{color:{MUTED};font-size:12px}}
figcaption{{font-size:12.5px;line-height:1.45}}
figcaption .row-id{{color:{MUTED};font-size:11.5px}}
.true{{color:#166534;font-weight:600}} .pred{{color:#b91c1c;font-weight:600}}
.true,.pred{{overflow-wrap:anywhere}}
.meter{{height:4px;background:{GRID};border-radius:2px;margin-top:5px;overflow:hidden}}
.meter span{{display:block;height:100%;background:{GAP_COLOUR}}}
footer{{color:{MUTED};font-size:12px;text-align:center}}
@media (max-width:900px){{.grid2{{grid-template-columns:1fr}}}}
"""


# ------------------------------------------------------------------ public


def render_report(
    evaluation: dict[str, Any] | Evaluation,
    metrics: dict[str, Any],
    errors: list[dict[str, Any]],
    *,
    title: str | None = None,
) -> str:
    """A self-contained HTML page of an evaluation's results.

    `evaluation` is the record or its wire document (camelCase, as served);
    `metrics` the metrics document (`dyff.metrics.compute`; any key may be
    missing); `errors` rows with `row_id`, `label`, `predicted` (class ids),
    `score` and `image` (the encoded image bytes, or None). Class names come
    from `metrics["labels"]`.
    """
    doc = evaluation.wire() if isinstance(evaluation, Evaluation) else dict(evaluation)
    name = _dig(doc, "metadata", "name") or "evaluation"
    title = title or f"Evaluation report: {name}"
    # Prediction ids past the dataset's labels name model labels the dataset lacks.
    labels = [str(x) for x in (metrics.get("labels") or []) + (metrics.get("extraLabels") or [])]
    sections = [
        _header(doc, metrics, title),
        f'<div class="grid2">{_metrics_table(metrics)}{_reliability_section(metrics)}</div>',
        _confusion_section(metrics),
        _per_class_section(metrics),
        _errors_section(errors, labels),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(sections)}"
        "<footer>Generated by dyff · self-contained page, no external resources</footer>"
        "</main></body></html>\n"
    )


def _row_images(
    blobs: BlobStore, dataset: Dataset, row_ids: Sequence[int], cache_dir: Path
) -> dict[int, bytes]:
    """The encoded images of `row_ids`, read from the shards that hold them (those rows only)."""
    shards = sorted(dataset.status.shards or [], key=lambda s: s.first_row)
    starts = [s.first_row for s in shards]
    wanted: dict[int, list[int]] = {}
    for rid in row_ids:
        i = bisect.bisect_right(starts, rid) - 1
        if i >= 0 and rid < shards[i].first_row + shards[i].rows:
            wanted.setdefault(i, []).append(int(rid))
    out: dict[int, bytes] = {}
    for i, ids in sorted(wanted.items()):
        key = layout.shard_key(dataset.account, shards[i].sha256)
        try:
            (path,) = results.local_paths(blobs, [key], cache_dir)
            table = pq.read_table(
                path, columns=["row_id", "image"], filters=[("row_id", "in", ids)]
            )
        except (DyffError, OSError, pa.ArrowException) as exc:
            log.warning("shard %s unreadable, its thumbnails are left out: %s", key, exc)
            continue
        rows = table.column("row_id").to_pylist()
        images = table.column("image").to_pylist()
        out.update(zip(rows, images, strict=True))
    return out


def build_report(
    records: RecordStore,
    blobs: BlobStore,
    account: str,
    name: str,
    cache_dir: Path,
    *,
    errors_limit: int = ERRORS_SHOWN,
) -> str:
    """The HTML report of a complete evaluation, gathered from the record and blob stores.

    Raises NotFound for a missing evaluation (or missing metrics/manifest) and
    Conflict for one that is not Complete. Thumbnails of rows whose dataset or
    shard is gone are shown as "image unavailable".
    """
    evaluation = records.get(Evaluation, account, name)
    if evaluation.status.phase != "Complete":
        raise Conflict(
            f"evaluation {name!r} is {evaluation.status.phase or 'Pending'}, not Complete",
            field="status.phase",
        )
    uid = evaluation.metadata.uid or ""
    metrics = json.loads(blobs.get(layout.metrics_key(account, name, uid)))
    manifest = json.loads(blobs.get(layout.manifest_key(account, name, uid)))
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = results.local_paths(blobs, manifest.get("files") or [], cache_dir)
    frame = results.Results(paths).confident_errors(errors_limit)
    rows = frame.select("row_id", "label", "predicted", "score").to_dicts()
    ref = evaluation.spec.dataset
    dataset = records.find(Dataset, ref.account or account, ref.name)
    if dataset is None:
        log.warning("dataset %s of evaluation %s is gone; no thumbnails", ref.name, name)
        images: dict[int, bytes] = {}
    else:
        images = _row_images(blobs, dataset, [r["row_id"] for r in rows], cache_dir)
        if not metrics.get("labels") and dataset.status.labels:
            metrics = {**metrics, "labels": dataset.status.labels}
    for row in rows:
        row["image"] = images.get(row["row_id"])
    return render_report(evaluation, metrics, rows, title=f"Evaluation report: {name}")
