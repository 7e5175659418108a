"""The HTML report: what it shows, escaping, missing metrics, assembly from the stores, and
what a real browser (headless Chromium) renders of it."""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from dyff import datasets, layout, metrics, report, tinymodels
from dyff.errors import Conflict
from dyff.results import PREDICTION_SCHEMA
from dyff.schema import ALL_METRICS, Dataset, Evaluation
from dyff.stores.blobs import BlobStore
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_MISSING = (
    "chromium not installed: apt-get install -y --no-install-recommends chromium fonts-liberation"
)
HOSTILE = "<script>alert(1)</script>"


# ------------------------------------------------------------------ helpers


class Page(HTMLParser):
    """Every element of a page with its attributes and the ids of its ancestors."""

    VOID = {"img", "br", "meta", "link", "input", "hr", "source", "stop", "line"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], tuple[str, ...]]] = []
        self.texts: list[tuple[str, tuple[str, ...], str, str]] = []
        self._stack: list[tuple[str, str | None, str]] = []
        self.feed(text)

    def _ids(self) -> tuple[str, ...]:
        return tuple(i for _, i, _ in self._stack if i)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.elements.append((tag, attributes, self._ids()))
        if tag not in self.VOID:
            self._stack.append((tag, attributes.get("id"), attributes.get("class", "")))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}, self._ids()))

    def handle_endtag(self, tag: str) -> None:
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if data.strip():
            tag, _, cls = self._stack[-1] if self._stack else ("", None, "")
            self.texts.append((data, self._ids(), tag, cls))

    def find(self, within: str, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a, ids in self.elements
            if t == tag
            and (within in ids or a.get("id") == within)
            and (cls is None or cls in a.get("class", "").split())
        ]

    def text(self, within: str, tag: str | None = None, cls: str | None = None) -> str:
        """The text inside element `within`, or only that of its `tag` (class `cls`) elements."""
        return " ".join(
            d
            for d, ids, t, c in self.texts
            if within in ids and tag in (None, t) and (cls is None or cls in c.split())
        )

    def ids(self) -> set[str]:
        return {a["id"] for _, a, _ in self.elements if "id" in a}


def make_metrics(
    n_classes: int = 10, rows: int = 600, seed: int = 0, names: list[str] | None = None
) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """A metrics document of a plausible model (~85% right) and its raw predictions."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, rows)
    right = rng.random(rows) < 0.85
    predicted = np.where(right, labels, rng.integers(0, n_classes, rows))
    score = np.where(predicted == labels, rng.beta(8, 2, rows), rng.beta(4, 3, rows))
    topk = np.stack([predicted] + [rng.integers(0, n_classes, rows) for _ in range(4)], axis=1)
    names = names or [f"digit {i}" for i in range(n_classes)]
    doc = metrics.compute(labels, predicted, score, topk, names, list(ALL_METRICS))
    return doc, labels, predicted, score


@functools.cache
def digits() -> tinymodels.Split:
    return tinymodels.digits_splits()[1]


def digit_pngs(count: int) -> tuple[list[bytes], np.ndarray]:
    images = digits().images[:count]
    return tinymodels.digits_png(images), images


def confident_errors(
    labels: np.ndarray, predicted: np.ndarray, score: np.ndarray, images: list[bytes]
) -> list[dict]:
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-score[wrong], kind="stable")][: len(images)]
    return [
        {
            "row_id": int(i),
            "label": int(labels[i]),
            "predicted": int(predicted[i]),
            "score": float(score[i]),
            "image": images[k],
        }
        for k, i in enumerate(order)
    ]


def decode_data_uri(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    im = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))
    assert im.format == "PNG"
    im.load()
    return im


def complete_evaluation() -> Evaluation:
    ev = factories.evaluation(name="digits-eval", model="tiny-vit", dataset="digits")
    ev.metadata.uid = "0b7c7e0c-5a5e-4f0e-9d59-0c1f5d1f6a10"
    ev.status.phase = "Complete"
    return ev


def assert_self_contained(html: str) -> None:
    assert not re.search(r"https?://", html), "the page must not reference anything remote"
    assert "<script" not in html.lower() and "<link" not in html.lower()
    for src in re.findall(r'\ssrc="([^"]*)"', html):
        assert src.startswith("data:image/png;base64,")
    assert set(re.findall(r"url\(([^)]*)\)", html)) <= {"#cm-scale"}


# ------------------------------------------------------------------ rendering


def test_full_report_shows_every_section_with_the_numbers() -> None:
    doc, labels, predicted, score = make_metrics()
    pngs, originals = digit_pngs(12)
    errors = confident_errors(labels, predicted, score, pngs)
    html = report.render_report(complete_evaluation(), doc, errors)
    page = Page(html)
    assert_self_contained(html)
    assert {
        "summary",
        "metrics-table",
        "confusion-matrix",
        "per-class",
        "reliability",
    } <= page.ids()
    assert "confident-errors" in page.ids()

    # Header: names and the headline numbers.
    header = page.text("summary")
    for name in ("digits-eval", "tiny-vit", "digits", "acme", "Complete"):
        assert name in header
    assert f"{doc['accuracy'] * 100:.1f}%" in header
    assert f"{doc['ece']:.3f}" in header and f"{doc['macro']['f1']:.3f}" in header

    table = page.text("metrics-table")
    assert f"{doc['accuracy'] * 100:.2f}%" in table
    assert f"{doc['top5Accuracy'] * 100:.2f}%" in table
    for key in ("precision", "recall", "f1"):
        assert f"{doc['macro'][key]:.3f}" in table
    assert f"{doc['ece']:.4f}" in table and "600" in table

    # Confusion matrix: one shaded cell per non-zero count, each count written in it.
    cm = np.array(doc["confusionMatrix"])
    assert len(page.find("confusion-matrix", "svg")) == 1
    cells = page.find("confusion-matrix", "rect", "cell")
    assert len(cells) == int((cm > 0).sum())
    assert len({c["fill"] for c in cells}) > 5  # shades vary with the share
    counts = [int(t) for t in page.text("confusion-matrix", "text", "cell-count").split()]
    assert sorted(counts) == sorted(int(v) for v in cm.ravel() if v > 0)
    for name in doc["labels"]:
        assert name in page.text("confusion-matrix")

    # Per-class bars: heights proportional to precision and recall.
    for key in ("precision", "recall"):
        bars = page.find("per-class", "rect", f"bar-{key}")
        assert len(bars) == 10
        heights = np.array([float(b["height"]) for b in bars])
        expected = np.array([c[key] for c in doc["perClass"]]) * 220
        assert np.allclose(heights, expected, atol=0.06)
    assert len(page.find("per-class", "tr")) == 11  # per-class table: header + 10 classes

    # Reliability: one bar per non-empty bin, one count bar per non-empty bin.
    non_empty = sum(1 for c in doc["calibration"]["counts"] if c > 0)
    assert len(page.find("reliability", "svg")) == 1
    assert len(page.find("reliability", "rect", "bin")) == non_empty
    assert len(page.find("reliability", "rect", "count")) == non_empty

    # Errors: a crisp thumbnail per row (8x8 digit -> 96x96 by nearest neighbour).
    imgs = page.find("confident-errors", "img")
    assert len(imgs) == 12
    for img, original in zip(imgs, originals, strict=True):
        thumb = np.asarray(decode_data_uri(img["src"]).convert("RGB"))
        assert thumb.shape == (96, 96, 3) and (img["width"], img["height"]) == ("96", "96")
        assert np.array_equal(thumb[::12, ::12], original)
        assert np.array_equal(thumb, np.repeat(np.repeat(original, 12, 0), 12, 1))
    text = page.text("confident-errors")
    first = errors[0]
    assert f"row {first['row_id']}" in text and f"{first['score']:.3f}" in text
    assert doc["labels"][first["label"]] in text and doc["labels"][first["predicted"]] in text


def test_hostile_label_and_names_are_escaped() -> None:
    names = [f"c{i}" for i in range(5)]
    names[3] = HOSTILE
    doc, labels, predicted, score = make_metrics(5, names=names)
    pngs, _ = digit_pngs(3)
    errors = confident_errors(labels, predicted, score, pngs)
    errors[0]["label"] = 3
    evaluation = {
        "metadata": {"name": '"><img src=x onerror=alert(2)>', "namespace": "<b>acct</b>"},
        "spec": {"model": {"name": "m&<i>"}, "dataset": {"name": "d", "account": "<u>x</u>"}},
        "status": {"phase": "<blink>"},
    }
    html = report.render_report(evaluation, doc, errors, title="<h1>title</h1>")
    page = Page(html)
    assert "<script" not in html and HOSTILE not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    for raw in ("<img src=x", "<b>acct", "<i>", "<u>x", "<blink>", "<h1>title"):
        assert raw not in html
    # The only elements are the report's own: no script, imgs only the thumbnails.
    tags = {t for t, _, _ in page.elements}
    assert "script" not in tags and "b" not in tags and "blink" not in tags
    assert len([1 for t, _, _ in page.elements if t == "img"]) == 3
    # ...and the text reads as the user wrote it.
    assert HOSTILE in page.text("confusion-matrix")
    assert HOSTILE in page.text("per-class")
    assert HOSTILE in page.text("confident-errors")
    assert '"><img src=x onerror=alert(2)>' in page.text("summary")
    assert_self_contained(html)


def test_user_text_stays_text_in_attributes_and_template_syntax() -> None:
    """Autoescape covers attributes too, and template syntax in user data is not evaluated."""
    names = ["{{ 7 * 7 }}", "{% for x in y %}", 'a "quoted" & <b>bold</b>', "x' onmouseover='y"]
    doc, labels, predicted, score = make_metrics(4, names=names)
    pngs, _ = digit_pngs(2)
    errors = confident_errors(labels, predicted, score, pngs)
    errors[0]["row_id"] = '7" onerror="alert(1)'  # written into the thumbnail's alt attribute
    html = report.render_report({"metadata": {"name": "{{ title }}"}}, doc, errors)
    page = Page(html)
    for section in ("confusion-matrix", "per-class"):
        text = page.text(section)
        assert all(name in text for name in names), section
    assert "{{ title }}" in page.text("summary")
    assert "<b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    attributes = {key for _, attrs, _ in page.elements for key in attrs}
    assert not attributes & {"onerror", "onmouseover"}
    alts = [a["alt"] for a in page.find("confident-errors", "img")]
    assert alts[0] == 'row 7" onerror="alert(1)'
    assert_self_contained(html)


def test_missing_metrics_say_not_computed() -> None:
    doc = {"labels": ["cat", "dog"], "rows": 40, "accuracy": 0.75, "top5Accuracy": None}
    html = report.render_report(complete_evaluation(), doc, [])
    page = Page(html)
    for section in ("confusion-matrix", "per-class", "reliability"):
        assert "Not computed" in page.text(section), section
        assert page.find(section, "svg") == []
    assert "75.00%" in page.text("metrics-table")
    assert "n/a" in page.text("metrics-table")  # top-5 impossible with fewer kept labels
    assert "No wrong predictions" in page.text("confident-errors")
    assert page.find("confident-errors", "img") == []

    # Nothing at all: still a page, every section says so.
    bare = Page(report.render_report({}, {}, []))
    assert "Not computed" in bare.text("metrics") and "metrics-table" not in bare.ids()
    assert bare.text("summary").count("not computed") == 5


def test_labels_the_dataset_lacks_and_omitted_top5_are_explained() -> None:
    """A partial label match: predictions of the model's extra label are named and counted;
    a 3-class model has no top-5 accuracy, and the page says why."""
    labels = np.array([0, 1, 2, 0])
    predicted = np.array([0, 3, 2, 3])  # id 3: the model's "cow", which the dataset lacks
    doc = metrics.compute(labels, predicted, np.full(4, 0.9), None, ["cat", "dog", "bird"],
                          list(ALL_METRICS), model_classes=3)  # fmt: skip
    doc["extraLabels"] = ["cow"]
    rows = [{"row_id": 1, "label": 1, "predicted": 3, "score": 0.9, "image": None}]
    page = Page(report.render_report(complete_evaluation(), doc, rows))
    table = page.text("metrics-table")
    assert "outside the dataset's labels" in table and "cow" in table
    assert "1.0 by construction" in table
    assert "at most 5 classes" in page.text("summary")
    assert "cow" in page.text("confident-errors")
    assert len(doc["confusionMatrix"]) == 3


def test_thumbnails_fit_and_broken_images_are_placeholders() -> None:
    big = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 200, 3), np.uint8))
    buf = io.BytesIO()
    big.save(buf, format="JPEG")
    uri, w, h = report.thumbnail_data_uri(buf.getvalue()) or ("", 0, 0)
    assert (w, h) == (64, 96) and decode_data_uri(uri).size == (64, 96)
    palette = Image.new("P", (20, 30))
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    uri, w, h = report.thumbnail_data_uri(buf.getvalue()) or ("", 0, 0)
    assert (w, h) == (60, 90)  # 30 -> 90: three times, the whole factor that fits
    assert report.thumbnail_data_uri(b"not an image") is None
    assert report.thumbnail_data_uri(None) is None

    rows = [{"row_id": 7, "label": 0, "predicted": 1, "score": 0.9, "image": b"\x89PNG junk"}]
    page = Page(report.render_report({}, {"labels": ["a", "b"]}, rows))
    assert page.find("confident-errors", "img") == []
    assert "image unavailable" in page.text("confident-errors")


def test_hundred_classes_stay_compact() -> None:
    names = [f"category_{i:03d}_with_a_long_name" for i in range(100)]
    doc, *_ = make_metrics(100, rows=3000, names=names)
    page = Page(report.render_report({}, doc, []))
    (svg,) = page.find("confusion-matrix", "svg")
    assert float(svg["width"]) <= 1130  # fits the page's column
    cells = page.find("confusion-matrix", "rect", "cell")
    assert 0 < float(cells[0]["width"]) <= 10
    # Counts would not fit a cell: none written (they stay in the cells' tooltips).
    assert page.text("confusion-matrix", "text", "cell-count") == ""
    written = page.text("confusion-matrix", "text").split()
    row_labels = [t for t in written if t.startswith("category_")]
    assert 0 < len(row_labels) < 200  # every other name on each axis, shortened
    assert len(page.find("per-class", "rect", "bar-recall")) == 100


# ------------------------------------------------------------------ from the stores


def put_predictions(blobs: BlobStore, key: str, frame: pl.DataFrame) -> None:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    blobs.put(key, buf.getvalue())


def test_build_report_reads_records_and_blobs(tmp_path: Path, blob_store: BlobStore) -> None:
    records = SqliteRecordStore(tmp_path / "records.db")
    pngs, originals = digit_pngs(60)
    truth = digits().labels[:60]
    names = [str(i) for i in range(10)]

    # A public dataset in another account, in two shards of 30 rows.
    shards = [
        datasets.write_shard(0, pngs[:30], truth[:30].tolist()),
        datasets.write_shard(30, pngs[30:], truth[30:].tolist()),
    ]
    for shard in shards:
        blob_store.put(layout.shard_key("public", shard.sha256), shard.data)
    dataset = factories.dataset("digits", account="public")
    dataset.spec.public = True
    records.create(dataset)

    def ingested(d: Dataset) -> None:
        d.status.phase = "Ready"
        factories.list_shards(blob_store, d, [s.shard() for s in shards])
        d.status.labels = names
        d.status.rows = 60

    records.mutate(Dataset, "public", "digits", ingested)

    ev = factories.evaluation("e1", account="acme", model="m1", dataset="digits")
    ev.spec.dataset.account = "public"
    records.create(ev)
    uid = records.get(Evaluation, "acme", "e1").metadata.uid or ""

    rng = np.random.default_rng(3)
    predicted = np.where(rng.random(60) < 0.6, truth, rng.integers(0, 10, 60))
    score = rng.random(60).astype(np.float32)
    edges = [0, 29, 30, 59]  # the first and last rows of each shard are among the errors
    predicted[edges] = (truth[edges] + 1) % 10
    score[edges] = [0.99, 0.98, 0.97, 0.96]
    files = []
    for part, rows in enumerate((slice(0, 30), slice(30, 60))):
        ids = np.arange(60)[rows]
        frame = pl.DataFrame(
            {
                "row_id": ids,
                "label": truth[rows],
                "predicted": predicted[rows],
                "score": score[rows],
                "correct": truth[rows] == predicted[rows],
                "topk_labels": [[int(p)] for p in predicted[rows]],
                "topk_scores": [[float(s)] for s in score[rows]],
            },
            schema=PREDICTION_SCHEMA,
        )
        key = f"{layout.evaluation_prefix('acme', 'e1', uid)}/part-{part}.parquet"
        put_predictions(blob_store, key, frame)
        files.append(key)
    blob_store.put(layout.manifest_key("acme", "e1", uid), json.dumps({"files": files}).encode())
    doc = metrics.compute(truth, predicted, score, None, names, ["accuracy", "ece"])
    blob_store.put(layout.metrics_key("acme", "e1", uid), json.dumps(doc).encode())

    with pytest.raises(Conflict):
        report.build_report(records, blob_store, "acme", "e1", tmp_path / "cache")
    records.mutate(Evaluation, "acme", "e1", lambda e: setattr(e.status, "phase", "Complete"))

    html = report.build_report(records, blob_store, "acme", "e1", tmp_path / "cache")
    page = Page(html)
    wrong = np.flatnonzero(predicted != truth)
    expected = sorted(wrong.tolist(), key=lambda i: (-score[i], i))[:12]
    assert len(expected) == 12
    shown = [int(t) for t in re.findall(r"row (\d+)", page.text("confident-errors"))]
    assert shown == expected  # most confident first, across both shards
    assert shown[:4] == edges
    imgs = page.find("confident-errors", "img")
    assert len(imgs) == 12
    for img, row in zip(imgs, expected, strict=True):
        thumb = np.asarray(decode_data_uri(img["src"]).convert("RGB"))
        assert np.array_equal(thumb[::12, ::12], originals[row])  # that row's own image
    assert f"{doc['accuracy'] * 100:.2f}%" in page.text("metrics-table")
    assert page.find("reliability", "svg") and not page.find("confusion-matrix", "svg")
    assert_self_contained(html)


# ------------------------------------------------------------------ in a browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--mute-audio",
]
# Injected into a copy of the page only (the report has no script): what rendered.
PROBE = """<script>addEventListener("load", () => {
  const box = (s) => { const e = document.querySelector(s);
    if (!e) return null; const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  document.body.dataset.probe = JSON.stringify({
    imgs: [...document.querySelectorAll("#confident-errors img")]
      .map((i) => [i.complete, i.naturalWidth, i.getBoundingClientRect().width]),
    boxes: Object.fromEntries(["#confusion-matrix svg", "#reliability svg", "#per-class svg",
      "#metrics-table"].map((s) => [s, box(s)])),
    scrollWidth: document.documentElement.scrollWidth,
  });
});</script>"""


def under_policy(html: str, *scripts: str) -> str:
    """The page under the shim's Content-Security-Policy for it (as a meta tag, which a
    file:// page obeys; frame-ancestors aside), with these inline scripts allowed by hash."""
    import base64
    import hashlib

    from api_shim.edge import REPORT_CSP

    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in scripts
    ]
    policy = "; ".join(
        [p for p in REPORT_CSP.split("; ") if not p.startswith("frame-ancestors")]
        + ([f"script-src {' '.join(hashes)}"] if hashes else [])
    )
    meta = f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
    assert html.count('<meta charset="utf-8">') == 1
    return html.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + meta)


def chromium(args: list[str], profile: Path, timeout: float = 30) -> str:
    """Run headless Chromium in its own process group; always leave nothing behind."""
    proc = subprocess.Popen(
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish in {timeout}s: {args}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # helpers it may have left running
        proc.wait()
    assert proc.returncode == 0, f"chromium exited {proc.returncode}"
    return out


@pytest.fixture
def rendered(tmp_path: Path) -> Iterator[Path]:
    doc, labels, predicted, score = make_metrics(names=[*(f"digit {i}" for i in range(9)), HOSTILE])
    pngs, _ = digit_pngs(12)
    errors = confident_errors(labels, predicted, score, pngs)
    path = tmp_path / "report.html"
    path.write_text(report.render_report(complete_evaluation(), doc, errors), encoding="utf-8")
    yield path


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=CHROMIUM_MISSING)
def test_report_renders_in_headless_chromium(rendered: Path, tmp_path: Path) -> None:
    # The DOM after load, with a probe of what the browser decoded and laid out.
    probed = tmp_path / "probed.html"
    # Under the shim's policy for the report: the probe is let in by its hash, nothing else.
    probe_body = PROBE.removeprefix("<script>").removesuffix("</script>")
    page_under_policy = under_policy(rendered.read_text(), probe_body)
    probed.write_text(page_under_policy.replace("</body>", PROBE + "</body>"))
    dom = chromium(["--dump-dom", probed.as_uri()], tmp_path / "profile-dom")
    page = Page(dom)
    assert page.find("confusion-matrix", "svg") and page.find("reliability", "svg")
    assert len(page.find("confident-errors", "img")) == 12
    assert "script" not in {t for t, _, ids in page.elements if "confusion-matrix" in ids}
    body = next(a for t, a, _ in page.elements if t == "body")
    probe = json.loads(body["data-probe"])
    assert len(probe["imgs"]) == 12
    for complete, natural_width, shown_width in probe["imgs"]:
        assert complete and natural_width == 96 and shown_width == 96
    for selector, box in probe["boxes"].items():
        assert box is not None and box[0] > 100 and box[1] > 100, selector
    assert probe["scrollWidth"] <= 1280  # nothing overflows the window sideways

    # A screenshot of the page as it is: not blank, and the charts' colours are there.
    shot = tmp_path / "report.png"
    strict = tmp_path / "strict.html"
    strict.write_text(under_policy(rendered.read_text()))
    chromium(
        [f"--screenshot={shot}", "--window-size=1280,2000", strict.as_uri()],
        tmp_path / "profile-shot",
    )
    im = Image.open(shot).convert("RGB")
    assert im.size == (1280, 2000)
    pixels = np.asarray(im).reshape(-1, 3)
    packed = pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    colours, counts = np.unique(packed, return_counts=True)
    assert len(colours) > 300, "too few colours: a blank or unstyled page"
    assert (packed != colours[np.argmax(counts)]).mean() > 0.2  # not all background
    # Each chart colour covers a visible area: precision blue, recall orange, dark Blues cells.
    for rgb in ((0x4C, 0x78, 0xA8), (0xF5, 0x85, 0x18)):
        assert (pixels == rgb).all(axis=1).sum() > 2000, rgb
    assert ((pixels[:, 2] > 100) & (pixels[:, 0] < 40)).sum() > 2000  # dark blue diagonal
