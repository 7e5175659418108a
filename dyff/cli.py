"""The `dyff` command line: `dyff up` on one machine, and a client of any dyff server.

Tables by default, `--json` for scripts. The server and key come from
`--server/--key`, then DYFF_SERVER/DYFF_API_KEY, then the config file that
`dyff up` writes (DYFF_CONFIG, default ~/.config/dyff/config.json).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
import yaml
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from dyff.client import ApiError, Client, ClientConfig
from dyff.config import load_settings
from dyff.errors import DyffError

if TYPE_CHECKING:
    from dyff.report.criteria_view import CriteriaView
    from dyff.report.robustness_view import RobustnessView

app = typer.Typer(no_args_is_help=True, help="dyff: evaluate AI models.", add_completion=False)
models = typer.Typer(no_args_is_help=True, help="Models: register, list, get, delete.")
datasets = typer.Typer(no_args_is_help=True, help="Datasets: register, list, get, delete.")
evaluations = typer.Typer(no_args_is_help=True, help="Evaluations: order, wait, list, delete.")
admin = typer.Typer(no_args_is_help=True, help="Administration against the stores directly.")
app.add_typer(models, name="models")
app.add_typer(datasets, name="datasets")
app.add_typer(evaluations, name="evaluations")
app.add_typer(admin, name="admin")

console = Console()
err = Console(stderr=True)


class State:
    server: str | None = None
    key: str | None = None
    json: bool = False


state = State()


@app.callback()
def _options(
    server: str = typer.Option(None, "--server", help="dyff server URL.", envvar="DYFF_SERVER"),
    key: str = typer.Option(None, "--key", help="API key.", envvar="DYFF_API_KEY"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    state.server, state.key, state.json = server, key, as_json


def client() -> Client:
    return Client(ClientConfig.load(state.server, state.key))


# ---------------------------------------------------------------- output


def _phase(entity: dict[str, Any]) -> str:
    return str((entity.get("status") or {}).get("phase") or "Pending")


def _ready(entity: dict[str, Any]) -> str:
    for c in (entity.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status"))
    return "Unknown"


def _accuracy(entity: dict[str, Any]) -> str:
    acc = ((entity.get("status") or {}).get("metrics") or {}).get("accuracy")
    return "" if acc is None else f"{acc:.4f}"


def _progress(entity: dict[str, Any]) -> str:
    p = (entity.get("status") or {}).get("progress") or {}
    if not p:
        return ""
    return f"{p.get('shardsDone', 0)}/{p.get('shardsTotal', 0)} ({p.get('shardsReused', 0)} reused)"


COLUMNS = {
    "models": [
        ("NAME", lambda e: e["metadata"]["name"]),
        ("FORM", lambda e: e["spec"]["source"]["form"]),
        ("PHASE", _phase),
        ("READY", _ready),
    ],
    "datasets": [
        ("NAME", lambda e: e["metadata"]["name"]),
        ("ROWS", lambda e: str((e.get("status") or {}).get("rows") or "")),
        ("PHASE", _phase),
        ("READY", _ready),
    ],
    "evaluations": [
        ("NAME", lambda e: e["metadata"]["name"]),
        ("MODEL", lambda e: e["spec"]["model"]["name"]),
        ("DATASET", lambda e: e["spec"]["dataset"]["name"]),
        ("PHASE", _phase),
        ("PROGRESS", _progress),
        ("ACCURACY", _accuracy),
    ],
}


# Columns holding names people copy: shown whole, never cut to "…" (folded onto the next
# line only when a terminal is too narrow for them).
WHOLE = {"NAME", "MODEL", "DATASET", "LABEL", "PREDICTED"}


def print_table(table: Table) -> None:
    """A table on stdout: fitted to a terminal; whole lines for a pipe or a file."""
    if console.is_terminal:
        console.print(table)
        return
    wide = console.options.update_width(100_000)
    width = Measurement.get(console, wide, table).maximum
    Console(width=max(width, console.width)).print(table)


def new_table(titles: list[str], *, whole: Sequence[str] = (), **options: Any) -> Table:
    """A table of these columns; those in WHOLE or `whole` are never cut to "…"."""
    table = Table(box=None, header_style="bold", **options)
    for title in titles:
        keep = title in WHOLE or title in whole
        table.add_column(title, overflow="fold" if keep else "ellipsis")
    return table


def show(plural: str, items: list[dict[str, Any]] | dict[str, Any]) -> None:
    if state.json:
        console.print_json(json.dumps(items))
        return
    rows = items if isinstance(items, list) else [items]
    table = new_table([title for title, _ in COLUMNS[plural]])
    for item in rows:
        table.add_row(*(get(item) for _, get in COLUMNS[plural]))
    print_table(table)
    if isinstance(items, dict):
        message = (items.get("status") or {}).get("message")
        if message:
            console.print(f"[dim]{message}[/dim]")
        show_by_criterion(items)


def show_by_criterion(entity: dict[str, Any]) -> None:
    """An evaluation's progress by criterion (only with perturbations): what each part
    reused from earlier runs and what it computed."""
    parts = ((entity.get("status") or {}).get("progress") or {}).get("byCriterion") or []
    if not parts:
        return
    table = new_table(["CRITERION", "SHARDS", "REUSED", "COMPUTED", "DONE"], whole=["CRITERION"])
    for part in parts:
        done, reused = part.get("shardsDone", 0), part.get("shardsReused", 0)
        table.add_row(
            Text(str(part.get("criterion", ""))),
            str(part.get("shardsTotal", 0)),
            str(reused),
            str(max(0, done - reused)),
            str(done),
        )
    print_table(table)


def _labels(values: list[str] | None) -> dict[str, str]:
    out = {}
    for value in values or []:
        k, sep, v = value.partition("=")
        if not sep:
            raise DyffError(f"label {value!r} is not key=value")
        out[k] = v
    return out


def _upload_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    )


def _uploading(
    path: Path, send: Callable[[Callable[[int, int], None]], dict[str, Any]]
) -> dict[str, Any]:
    """Run `send(progress)` (an upload of `path`) under a progress bar; its answer."""
    if not path.exists():
        raise DyffError(f"{path}: no such file or folder")
    with _upload_progress() as bar:
        task = bar.add_task(f"upload {path.name}", total=None)

        def advance(sent: int, total: int) -> None:
            bar.update(task, completed=sent, total=total)

        return send(advance)


def _register(
    plural: str,
    name: str,
    form: str,
    path: Path,
    labels: dict[str, str],
    extra: dict[str, Any],
    wait: bool = False,
    timeout: float = 3600,
) -> None:
    with client() as c:
        entity = _uploading(
            path,
            lambda progress: c.register_upload(
                plural, name, form, path, labels=labels, extra_spec=extra, progress=progress
            ),
        )
        if wait:
            entity = wait_until_ready(c, plural, name, timeout)
    show(plural, entity)


def wait_until_ready(c: Client, plural: str, name: str, timeout: float) -> dict[str, Any]:
    """Poll a model or dataset until Ready, showing its phase and message; a failure raises
    with the Ready condition's reason and the status message (exit status 2)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[phase]} {task.fields[note]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(f"{plural[:-1]} {name}", phase="", note="")

        def update(entity: dict[str, Any]) -> None:
            message = (entity.get("status") or {}).get("message") or ""
            bar.update(task, phase=_phase(entity), note=f"[dim]{message[:80]}[/dim]")

        return c.wait(plural, name, timeout=timeout, on_change=update)


# ---------------------------------------------------------------- models


@models.command("create")
def models_create(
    name: str,
    upload: Path | None = typer.Option(
        None, "--upload", help="Model folder or archive (a transformers folder, or a Bento)."
    ),
    image: str | None = typer.Option(
        None,
        "--image",
        help="A container image running a BentoML service that speaks "
        "image-classification/v1, pinned by digest: REPO@sha256:<64 hex>.",
    ),
    port: int = typer.Option(3000, help="With --image: the port its service listens on."),
    form: str = typer.Option("transformers", help="With --upload: transformers or bento."),
    label: list[str] = typer.Option(None, "--label", help="key=value; repeatable."),
    public: bool = typer.Option(False, help="Let every account use it."),
    wait: bool = typer.Option(False, help="Wait until it is Ready; fail if it fails."),
    timeout: float = typer.Option(3600, help="Seconds to wait at most."),
) -> None:
    """Register a model: upload a folder or archive (--upload), or name an image (--image)."""
    if (upload is None) == (image is None):
        raise typer.BadParameter("give exactly one of --upload and --image")
    if image is not None:
        if "@sha256:" not in image:
            raise typer.BadParameter(
                f"image {image!r} must be pinned by digest (REPO@sha256:<64 hex>)",
                param_hint="--image",
            )
        with client() as c:
            entity = c.register_image(
                name, image, port=port, labels=_labels(label), extra_spec={"public": public}
            )
            if wait:
                entity = wait_until_ready(c, "models", name, timeout)
        show("models", entity)
        return
    assert upload is not None
    _register("models", name, form, upload, _labels(label), {"public": public}, wait, timeout)


@datasets.command("create")
def datasets_create(
    name: str,
    upload: Path = typer.Option(
        ..., "--upload", help="Parquet file, HF layout folder/archive, or ImageFolder archive."
    ),
    form: str = typer.Option(None, help="parquet or imagefolder (default: by content)."),
    shard_rows: int = typer.Option(1000, help="Rows per shard."),
    split: str = typer.Option(None, help="Split of a Hugging Face layout (default: test)."),
    label: list[str] = typer.Option(None, "--label", help="key=value; repeatable."),
    public: bool = typer.Option(False, help="Let every account use it."),
    wait: bool = typer.Option(False, help="Wait until it is Ready; fail if it fails."),
    timeout: float = typer.Option(3600, help="Seconds to wait at most."),
) -> None:
    """Register a dataset and upload it."""
    # A folder with Parquet files is the Hugging Face layout; the server tells archives apart.
    parquet = upload.suffix == ".parquet" or (upload.is_dir() and any(upload.rglob("*.parquet")))
    form = form or ("parquet" if parquet else "imagefolder")
    extra = {"shardRows": shard_rows, "public": public, **({"split": split} if split else {})}
    _register("datasets", name, form, upload, _labels(label), extra, wait, timeout)


def _crud(group: typer.Typer, plural: str) -> None:
    @group.command("get")
    def get(name: str) -> None:
        """Show one."""
        with client() as c:
            show(plural, c.get(plural, name))

    @group.command("list")
    def list_(
        phase: str = typer.Option(None, help="Only this phase."),
        label: list[str] = typer.Option(None, "--label", help="key=value; repeatable."),
    ) -> None:
        """List the account's."""
        with client() as c:
            items = list(c.list_all(plural, phase=phase, label=label or None))
        show(plural, items)

    @group.command("delete")
    def delete(
        name: str,
        cascade: bool = typer.Option(False, help="Also delete what uses it."),
    ) -> None:
        """Delete it and everything it stored (the controller finishes the job)."""
        with client() as c:
            show(plural, c.delete(plural, name, cascade))


for _group, _plural in ((models, "models"), (datasets, "datasets"), (evaluations, "evaluations")):
    _crud(_group, _plural)


def _resume(group: typer.Typer, plural: str) -> None:
    @group.command("upload")
    def upload(
        name: str,
        path: Path = typer.Argument(..., help="The file or folder that was declared."),
        wait: bool = typer.Option(False, help="Wait until it is Ready; fail if it fails."),
        timeout: float = typer.Option(3600, help="Seconds to wait at most."),
    ) -> None:
        """Upload the file of one still waiting for it, with a fresh upload ticket (when
        the registration's expired or the upload was cut off)."""
        with client() as c:
            entity = _uploading(
                path, lambda progress: c.resume_upload(plural, name, path, progress=progress)
            )
            if wait:
                entity = wait_until_ready(c, plural, name, timeout)
        show(plural, entity)


_resume(models, "models")
_resume(datasets, "datasets")


# ------------------------------------------------------------ evaluations


def wait_with_progress(c: Client, name: str, timeout: float) -> dict[str, Any]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} shards {task.fields[note]}"),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(name, total=None, note="")

        def update(entity: dict[str, Any]) -> None:
            p = (entity.get("status") or {}).get("progress") or {}
            note = f"({p.get('shardsReused', 0)} reused) {_phase(entity)}"
            bar.update(
                task,
                completed=p.get("shardsDone", 0),
                total=p.get("shardsTotal") or None,
                note=note,
            )

        return c.wait("evaluations", name, timeout=timeout, on_change=update)


@evaluations.command("order")
def evaluations_order(
    model: str = typer.Option(..., help="Model name (or ACCOUNT/NAME of a public one)."),
    dataset: str = typer.Option(..., help="Dataset name (or ACCOUNT/NAME)."),
    name: str = typer.Option(None, help="Name; derived from the order when omitted."),
    top_k: int = typer.Option(None, help="Labels kept per prediction."),
    metric: list[str] = typer.Option(None, "--metric", help="Metric to compute; repeatable."),
    by_index: bool = typer.Option(
        False, "--by-index", help="Model label id i is dataset label id i (labelMapping)."
    ),
    map_label: list[str] = typer.Option(
        None, "--map-label", help="MODEL_LABEL=DATASET_LABEL (labelMapping); repeatable."
    ),
    wait: bool = typer.Option(False, help="Wait until it completes."),
) -> None:
    """Order an evaluation (the same order again answers with the first). Labels are matched
    by name; --by-index or --map-label say how they meet when their names differ."""
    if by_index and map_label:
        raise DyffError("--by-index and --map-label exclude each other")
    mapping: dict[str, Any] | None = None
    if by_index:
        mapping = {"byIndex": True}
    elif map_label:
        pairs = [item.partition("=") for item in map_label]
        if any(not sep or not k or not v for k, sep, v in pairs):
            raise DyffError("--map-label takes MODEL_LABEL=DATASET_LABEL")
        mapping = {"map": {k: v for k, _, v in pairs}}
    with client() as c:
        evaluation, new = c.order(
            model, dataset, name=name, top_k=top_k, metrics=metric, label_mapping=mapping
        )
        if not state.json:
            err.print("ordered" if new else "already ordered: reusing it")
        if wait:
            evaluation = wait_with_progress(c, evaluation["metadata"]["name"], 3600)
    show("evaluations", evaluation)


@evaluations.command("wait")
def evaluations_wait(
    name: str, timeout: float = typer.Option(3600, help="Seconds to wait at most.")
) -> None:
    """Wait for an evaluation, with a live progress bar."""
    with client() as c:
        show("evaluations", wait_with_progress(c, name, timeout))


@app.command("metrics")
def metrics(name: str) -> None:
    """The metrics of a complete evaluation: each headline metric with its interval, and,
    when the evaluation has criteria, its slices (flagged ones first) and gates, and with
    perturbations, its accuracy and error per kind and severity."""
    from dyff.report.criteria_view import criteria_view
    from dyff.report.robustness_view import robustness_view

    with client() as c:
        doc = c.metrics(name)
    if state.json:
        console.print_json(json.dumps(doc))
        return
    view = criteria_view(doc)
    level = view.level_text.replace(" ", "") if view else ""
    table = Table(box=None, header_style="bold")
    table.add_column("METRIC")
    table.add_column("VALUE", justify="right")
    if view is not None:
        table.add_column(f"{level or '?'} INTERVAL")

    def row(label: str, value: str, criteria_key: str | None = None) -> None:
        if view is None:
            table.add_row(label, value)
            return
        estimate = view.estimate(criteria_key) if criteria_key else None
        table.add_row(label, value, estimate.interval if estimate else "")

    for key in ("accuracy", "top5Accuracy", "ece"):
        if doc.get(key) is not None:
            row(key, f"{doc[key]:.4f}", key)
    macro_keys = {"precision": "macroPrecision", "recall": "macroRecall", "f1": "macroF1"}
    for key, value in (doc.get("macro") or {}).items():
        row(f"macro {key}", f"{value:.4f}", macro_keys.get(key))
    row("rows", str(doc.get("rows", "")))
    if doc.get("predictedOutsideLabels"):
        row("predicted outside labels", str(doc["predictedOutsideLabels"]))
    print_table(table)
    if doc.get("top5Omitted"):
        err.print(f"[dim]top5Accuracy left out: {doc['top5Omitted']}[/dim]")
    if view is not None:
        _print_slices(view)
        _print_gates(view)
    robust = robustness_view(doc)
    if robust is not None and robust.kinds:
        _print_robustness(robust)


def _print_slices(view: CriteriaView) -> None:
    """Per slice spec: a line saying what is flagged, then every slice value, flagged first
    (most severe first). Slice values are user data: printed as text, never as markup."""
    level = view.level_text.replace(" ", "") or "?"
    for s in view.slices:
        flagged = len(s.flagged)
        note = [f"{flagged} of {len(s.rows)} flagged"]
        if s.q is not None:
            note.append(f"q={s.q:g}")
        if s.min_support is not None:
            note.append(f"min support {s.min_support}")
        console.print()
        console.print(
            Text(f"slices by {', '.join(s.by)}: " + ", ".join(note), style="bold"), soft_wrap=True
        )
        columns = [c.upper() for c in s.by]
        titles = [*columns, "SUPPORT", "ACCURACY", f"{level} INTERVAL", "OTHER ROWS", "FLAG"]
        table = new_table(titles, whole=columns)
        for r in s.rows:
            flag = ""
            if r.flagged:
                flag = "FLAGGED" + (f" q={r.q_value:.3g}" if r.q_value is not None else "")
            elif not r.tested:
                flag = "untested"
            table.add_row(
                *(Text(v) for v in r.values),
                "" if r.support is None else str(r.support),
                _dec4(r.accuracy),
                r.interval,
                _dec4(r.rest_accuracy),
                Text(flag, style="bold red" if r.flagged else ""),
            )
        print_table(table)


def _print_gates(view: CriteriaView) -> None:
    """Each gate: PASS/FAIL, the value observed (or its bound) and what was required."""
    gates = view.gates
    if gates is None or not gates.rows:
        return
    verdict = {True: "PASSED", False: "FAILED", None: "?"}[gates.passed]
    console.print()
    console.print(Text(f"gates: {verdict}: {gates.message}", style="bold"), soft_wrap=True)
    table = new_table(["GATE", "RESULT", "OBSERVED", "REQUIRED", "ROWS"], whole=["GATE"])
    for g in gates.rows:
        observed = _dec4(g.observed) + ("" if g.using == "value" else f" ({g.using})")
        required = f"{g.metric} {g.threshold}" + (f" on {g.slice}" if g.slice else "")
        table.add_row(
            Text(g.name),
            Text(g.outcome, style="bold green" if g.passed else "bold red"),
            observed,
            Text(required),
            "" if g.rows is None else str(g.rows),
        )
    print_table(table)


def _print_robustness(view: RobustnessView) -> None:
    """A row per kind and severity (accuracy, error, and the error's change from the clean
    images'), then per kind its mean and relative error, then the means over the kinds."""
    console.print()
    clean = f"clean accuracy {_dec4(view.clean_accuracy) or '?'}"
    clean += f", error {_dec4(view.clean_error) or '?'}"
    console.print(Text(f"robustness: {clean}", style="bold"), soft_wrap=True)
    titles = ["KIND", "SEVERITY", "PARAMETER", "ACCURACY", "ERROR", "Δ vs CLEAN"]
    table = new_table(titles, whole=["KIND"])
    for k in view.kinds:
        for r in k.rows:
            table.add_row(
                Text(k.kind),
                "" if r.severity is None else str(r.severity),
                r.parameter_text,
                _dec4(r.accuracy),
                _dec4(r.error),
                r.delta_text,
            )
    print_table(table)
    for k in view.kinds:
        over = f" over {k.over_text}" if k.over_text else ""
        seed = f", seed {k.seed}" if k.seed is not None else ""
        line = f"{k.kind}: mean error {_dec4(k.mean_error) or '?'}"
        line += f", relative error {k.relative_text or '?'}{over}{seed}"
        console.print(Text(line), soft_wrap=True)
    if view.mean_error is not None or view.relative_error is not None:
        n = len(view.kinds)
        line = f"mean over {n} kind{'' if n == 1 else 's'}: mean error "
        line += f"{_dec4(view.mean_error) or '?'}, relative error {view.relative_text or '?'}"
        console.print(Text(line, style="bold"), soft_wrap=True)


def _dec4(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


@app.command("predictions")
def predictions(
    name: str,
    wrong: bool = typer.Option(False, "--wrong", help="Only wrong predictions."),
    right: bool = typer.Option(False, "--right", help="Only right predictions."),
    label: list[str] = typer.Option(
        None, "--label", help="True label: name or id; repeatable (a name wins over an id)."
    ),
    predicted: list[str] = typer.Option(
        None, "--predicted", help="Predicted label: name or id; repeatable."
    ),
    min_score: float = typer.Option(None, help="Top-1 score at least."),
    max_score: float = typer.Option(None, help="Top-1 score at most."),
    order: str = typer.Option("row_id", help="row_id, score_desc or score_asc."),
    limit: int = typer.Option(20, help="Rows to show."),
    offset: int = typer.Option(0, help="Rows to skip."),
    slice_: list[str] = typer.Option(
        None, "--slice", help="COLUMN:VALUE of the dataset's attributes; repeatable (all hold)."
    ),
    perturbation: str = typer.Option(
        None, help="KIND/SEVERITY: the rows of a perturbation the evaluation asked for."
    ),
) -> None:
    """Query predictions with structured filters. --label and --predicted take a label's name
    or its id; a value that is a label's name means that label, even when it is also a
    number (datasets of integer labels name label i "i", so both readings agree there)."""
    correct = False if wrong else (True if right else None)
    with client() as c:
        names = c.label_names(name) if label or predicted else []
        page = c.predictions(
            name,
            correct=correct,
            label=label_ids(label, names, "--label"),
            predicted=label_ids(predicted, names, "--predicted"),
            minScore=min_score,
            maxScore=max_score,
            order=order,
            limit=limit,
            offset=offset,
            slice=slice_ or None,
            perturbation=perturbation,
        )
    if state.json:
        console.print_json(json.dumps(page))
        return
    labels = page.get("labels") or []
    table = new_table(
        ["ROW_ID", "LABEL", "PREDICTED", "SCORE", "CORRECT"],
        title=f"{len(page['rows'])} of {page['total']} rows",
    )
    for row in page["rows"]:
        table.add_row(
            str(row.get("row_id", "")),
            label_text(row.get("label"), labels),
            label_text(row.get("predicted"), labels),
            "" if row.get("score") is None else f"{row['score']:.4f}",
            str(row.get("correct", "")),
        )
    print_table(table)


def label_ids(values: list[str] | None, names: list[str], option: str) -> list[int] | None:
    """Label ids from names or ids: a label's name first, then an integer id."""
    if not values:
        return None
    index: dict[str, int] = {}
    for i, n in enumerate(names):
        index.setdefault(n, i)
    ids = []
    for value in values:
        if value in index:
            ids.append(index[value])
        elif value.lstrip("-").isdigit():
            ids.append(int(value))
        else:
            known = ", ".join(names[:10]) + (", …" if len(names) > 10 else "")
            raise DyffError(f"{option} {value!r} is neither a label name nor an id ({known})")
    return ids


def label_text(value: Any, names: list[str]) -> str:
    """`name (id)`, or the id alone when the name is the id (or unknown)."""
    if not isinstance(value, int):
        return "" if value is None else str(value)
    if 0 <= value < len(names) and names[value] != str(value):
        return f"{names[value]} ({value})"
    return str(value)


@app.command("report")
def report(
    name: str,
    output: Path = typer.Option(None, "-o", "--output", help="Where to write the HTML."),
) -> None:
    """Write an evaluation's self-contained HTML report."""
    with client() as c:
        html = c.report(name)
    output = output or Path(f"{name}.html")
    output.write_text(html)
    console.print(str(output.resolve()))


@app.command("compare")
def compare(
    a: str = typer.Argument(..., help="Evaluation A (the baseline)."),
    b: str = typer.Argument(..., help="Evaluation B (compared against A)."),
    output: Path = typer.Option(
        None,
        "-o",
        "--output",
        help="Also write the self-contained HTML report here (default resamples and seed).",
    ),
    resamples: int = typer.Option(None, help="Bootstrap resamples (default 1000)."),
    seed: int = typer.Option(None, help="Seed of the bootstrap (default 0)."),
) -> None:
    """Compare two complete evaluations on their common rows: B - A per metric with 95 %
    paired-bootstrap intervals, McNemar's exact test, per-class recall differences."""
    with client() as c:
        doc = c.compare(a, b, resamples=resamples, seed=seed)
        if output is not None:
            output.write_text(c.comparison_report(a, b))
    if state.json:
        console.print_json(json.dumps(doc))
        if output is not None:
            err.print(str(output.resolve()))
        return
    console.print(
        f"B [bold]{b}[/bold] against A [bold]{a}[/bold]: {doc['rows']:,} common rows "
        f"({doc.get('commonShards', '?')} shards)"
    )
    table = new_table(["METRIC", "A", "B", "B - A", "95% INTERVAL"])
    for m in doc["metrics"]:
        low, high = m["interval"]
        interval = "" if low is None else f"[{low:+.4f}, {high:+.4f}]"
        table.add_row(m["metric"], f"{m['a']:.4f}", f"{m['b']:.4f}", f"{m['difference']:+.4f}",
                      interval)  # fmt: skip
    print_table(table)
    t = doc["mcnemar"]
    console.print(
        f"McNemar: both right {t['bothRight']:,}, fixed (A wrong, B right) {t['fixed']:,}, "
        f"broken (A right, B wrong) {t['broken']:,}, both wrong {t['bothWrong']:,}; "
        f"exact p = {t['pValue']:.3g}"
    )
    if output is not None:
        console.print(str(output.resolve()))


@app.command("leaderboard")
def leaderboard(
    dataset: str,
    metric: str = typer.Option("accuracy", help="accuracy, top5_accuracy, macro_f1 or ece."),
    account: str = typer.Option(None, help="The dataset's account, for a public dataset."),
    limit: int = typer.Option(None, help="Evaluations shown (default 20, at most 100)."),
) -> None:
    """Your complete evaluations on a dataset, ranked, with 95 % intervals; '~' marks one not
    significantly different from the one ranked above it."""
    with client() as c:
        board = c.leaderboard(dataset, metric, account=account, limit=limit)
    if state.json:
        console.print_json(json.dumps(board))
        return
    table = new_table(["RANK", "NAME", "MODEL", metric.upper(), "95% INTERVAL", "VS ABOVE"])
    for e in board["entries"]:
        low, high = e["interval"]
        vs = e.get("vsPrevious") or {}
        mark = {True: "differs", False: "~ same", None: ""}[vs.get("significant")]
        if vs.get("pValue") is not None:
            mark += f" (p={vs['pValue']:.2g})"
        table.add_row(
            "" if e["rank"] is None else str(e["rank"]),
            e["evaluation"],
            str((e.get("model") or {}).get("name", "")),
            "" if e["value"] is None else f"{e['value']:.4f}",
            "" if low is None else f"[{low:.4f}, {high:.4f}]",
            mark,
        )
    print_table(table)


@app.command("apply")
def apply(
    filename: Path = typer.Option(..., "-f", "--filename", help="YAML of dyff resources."),
) -> None:
    """Create what a YAML file describes: the same custom-resource YAML kubectl applies."""
    docs = [d for d in yaml.safe_load_all(filename.read_text()) if d]
    with client() as c:
        for doc in docs:
            outcome, _ = c.apply(doc)
            console.print(f"{doc.get('kind', '?').lower()}/{doc['metadata']['name']} {outcome}")


# ------------------------------------------------------------------ admin


@admin.command("bootstrap")
def bootstrap(
    account: str = typer.Option("admin", help="Name of the first (admin) account."),
) -> None:
    """Create the first account and an admin API key; prints the key (shown once)."""
    from dyff import accounts
    from dyff.stores import open_records

    records = open_records(load_settings().records)
    try:
        token = accounts.bootstrap(records, account)
    finally:
        records.close()
    typer.echo(token)


@admin.command("fsck")
def fsck(
    fix: bool = typer.Option(False, "--fix", help="Remove what belongs to nothing."),
) -> None:
    """List records, blobs, upload tickets, work folders and Jobs that belong to nothing
    (entities of deleted accounts, tickets and uploads of deleted entities, caches of
    models and datasets gone, work of entities gone); --fix removes them (entities are
    marked deleting, for the controller)."""
    from importlib.metadata import entry_points

    from dyff import fsck as check
    from dyff.stores import open_blobs, open_records

    settings = load_settings()
    records, blobs = open_records(settings.records), open_blobs(settings.blobs)
    # Work folders and Jobs: the apps that make them say where (controller/workplaces.py).
    places = [p for e in entry_points(group="dyff.workplaces") if (p := e.load()(settings))]
    try:
        orphans = check.find_orphans(records, blobs, places)
        if state.json:
            typer.echo(json.dumps([o.__dict__ for o in orphans], indent=2))
        else:
            table = new_table(["STORE", "KIND", "ACCOUNT", "NAME", "WHY"])
            for o in orphans:
                table.add_row(o.store, o.kind, o.account, o.name, o.reason)
            print_table(table)
        if fix:
            err.print(f"removed {check.fix(records, blobs, orphans, places)} of {len(orphans)}")
    finally:
        records.close()
        blobs.close()


@admin.command("gitops")
def gitops(
    account: str = typer.Argument(..., help="The account (its namespace)."),
    repo: str = typer.Option(..., "--repo", help="The Git repository with gitops/ACCOUNT/."),
    revision: str = typer.Option("main", "--revision", help="Branch, tag or commit."),
) -> None:
    """Print the Argo CD AppProject and Application that sync gitops/ACCOUNT of --repo
    into the account's namespace, and may touch nothing else; `kubectl apply -f -` them."""
    from dyff.argocdgen import account_gitops

    try:
        typer.echo(account_gitops(account, repo, revision), nl=False)
    except ValueError as exc:
        raise DyffError(str(exc)) from None


@admin.command("gcp-setup")
def gcp_setup(
    project: str = typer.Option(..., "--project", help="Google Cloud project id."),
    bucket: str = typer.Option(..., "--bucket", help="The bucket for dyff's blobs."),
    location: str = typer.Option(..., "--location", help="Region, e.g. europe-west4."),
    node_service_account: str | None = typer.Option(
        None, "--node-service-account", help="The GKE nodes' service account (image pulls)."
    ),
    apply: bool = typer.Option(False, "--apply", help="Run the commands (default: print)."),
) -> None:
    """The project's service accounts, roles, bucket and image repository for dyff on GKE
    and Cloud Run, as idempotent gcloud commands (dyff/gcp.py); a dry run unless --apply."""
    from dyff import gcp

    _run_gcp(lambda: gcp.platform_steps(project, bucket, location, node_service_account), apply)


@admin.command("gcp-account")
def gcp_account(
    account: str = typer.Argument(..., help="The account (its namespace)."),
    project: str = typer.Option(..., "--project", help="Google Cloud project id."),
    apply: bool = typer.Option(False, "--apply", help="Run the commands (default: print)."),
) -> None:
    """Let an account's namespace use the workload and image-builder identities (Workload
    Identity bindings); a dry run unless --apply."""
    from dyff import gcp

    _run_gcp(lambda: gcp.account_steps(project, account), apply)


def _run_gcp(steps: Callable[[], list[Any]], apply: bool) -> None:
    from dyff import gcp

    try:
        planned = steps()
    except ValueError as exc:
        raise DyffError(str(exc)) from None
    if code := gcp.run(planned, apply, echo=typer.echo):
        raise DyffError(f"a gcloud command failed (exit {code}); fix it and run again")


def _plugin_commands() -> None:
    """Commands that other packages register under the entry-point group `dyff.commands`
    (`dyff up` comes from controller/up.py, which wires the apps together)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="dyff.commands"):
        app.command(entry.name)(entry.load())


_plugin_commands()


def main() -> None:
    try:
        app()
    except ApiError as exc:
        field = f" ({exc.field})" if exc.field else ""
        err.print(f"[red]dyff: {exc.status}: {exc}{field}[/red]")
        sys.exit(1)
    except DyffError as exc:
        err.print(f"[red]dyff: {exc}[/red]")
        sys.exit(2)


if __name__ == "__main__":
    main()
