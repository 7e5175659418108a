"""Run an Evaluation: `python -m dyff.workloads.evaluate --config FILE`.

1. Read the Evaluation and its Model and Dataset (both must be Ready; refs may
   name another account's public entity) and plan (`dyff.evaluation.plan`):
   shards whose prediction file exists in this account's cache are reused.
2. If shards are missing, serve the model — its Bento under `bentoml serve`
   on loopback (one server per run); under `dyff up` (DYFF_WARM_POOL set), the
   warm server its pool keeps for this model and these exact serving settings,
   started by the pool with the same code when there is none (a server that
   dies mid-run is seen as quickly: its pid is watched); or, when
   `DYFF_MODEL_URL` is set, the server already running there (an image-form
   model's container; image-form models are never kept warm) — and
   stream the missing shards through it: each image decoded once, batches of
   `spec.run.batchSize` images per request, `spec.run.concurrency` requests in
   flight, across shard boundaries so the server never idles between shards.
   Each shard's predictions go to its cache key with one atomic `blobs.put`
   the moment its last batch answers; progress is written after every shard.
   Under `dyff up` (DYFF_IN_PROCESS=1), dyff's own model with no warm server
   running is run in this process instead (`dyff.runtime.in_process`: the
   service's own code on the same batches), and the pool is asked to start its
   server for the next evaluation.
   Then each perturbation and severity of `spec.criteria.perturbations` that
   lacks predictions: the same, with every image corrupted first
   (`dyff.robustness`), stored under the variant's own keys.
3. Compute the metrics from the prediction files of all shards (reused or
   not; streamed, a batch at a time), the criteria and the robustness
   section, write `metrics.json` and the manifest, and mark the evaluation
   Complete with the headline metrics.

A model that runs its owner's code (`status.userCode`: a user's Bento, or an
image) is spoken to only through the public protocol image-classification/v1
(docs/serving-protocol.md): its labels from `/metadata` (matched to the
dataset's then, when ingestion could not read them), each shard's original
image files sent as multipart to `/classify_images`, the label names it
answers mapped to ids. Its Bento is served with its own code, in its own
process, without credentials; an image runs in a locked-down container
(`dyff.runtime.container`) where Docker or Podman works, or, on Kubernetes,
in the isolated Pod whose URL the controller passes. A server that exits or
fails to start within DYFF_MODEL_START_TIMEOUT_S (600 s) fails the evaluation
(ModelServerFailed, with the tail of its log); one that dies mid-run is seen
within a second (its process exited), not after request timeouts.

Crash safety comes from content addressing: a killed run leaves whole
prediction files or none (atomic puts), and the next run reuses them and
infers the rest. The `bentoml serve` a run starts lives in its own process
group; a small reaper process (its own session, watching a pipe the run
holds open) kills the server's whole family if the run dies without
stopping it, SIGKILL included.

Indexed Jobs: with `shard_index`/`shard_count` in the config, a pod infers
only the missing shards at dataset positions i with i % shard_count ==
shard_index. Then it lists the cache: if every shard's predictions exist,
it writes the metrics and completes the evaluation, otherwise it leaves that
to the pods still working. The last pod to store a shard always sees them all
(each pod lists after its own last write), so some pod completes the
evaluation; two that both see them all write the same files. A run without
an index infers whatever is missing and always writes the metrics.

`status.timings` (on Complete): seconds queued (the record's creationTimestamp, stamped
to the microsecond, to the workload's start), starting the model server (0 when warm
or when nothing was inferred), streaming the shards through it, and the metrics.

Status fields are written by `set_status` only, which settles phases with the
controller's own `dyff.lifecycle.settle`.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dyff import criteria, layout, results, robustness
from dyff.datasets import read_shard
from dyff.errors import NotFound, WorkloadFailed
from dyff.evaluation import (
    CLEAN,
    Inputs,
    Plan,
    Variant,
    assigned,
    encode_json,
    encode_predictions,
    inputs_for,
    manifest_doc,
    plan_inputs,
    prediction_table,
    resolve,
    serves_user_code,
    top5_answerable,
)
from dyff.lifecycle import EvaluationPhase as Phase
from dyff.lifecycle import settle
from dyff.metrics import summary
from dyff.runtime.client import (
    ModelClient,
    Resize,
    ServiceClient,
    ServiceError,
    TopK,
    encoded_batches,
    image_batches,
)
from dyff.runtime.in_process import IN_PROCESS_ENV, InProcessModel
from dyff.schema import (
    GATES_CONDITION,
    ConditionStatus,
    Evaluation,
    MetricsSummary,
    Progress,
    Shard,
    Timings,
)
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore
from dyff.workloads.common import WorkloadConfig, run_main
from dyff.workloads.pod import MODEL_URL_ENV

log = logging.getLogger("dyff.workloads.evaluate")

# Torch threads of the server a run starts (default: `server_threads`).
MODEL_THREADS_ENV = "DYFF_MODEL_THREADS"
# Set in the environment of the server a run starts: how the reaper finds it.
SERVER_TOKEN_ENV = "DYFF_EVAL_SERVER"
# Models whose Bento is smaller than this are overhead-bound: the server gets one torch
# thread (intra-op threads only add barriers, and OpenMP spin steals the core the
# client decodes on); larger, compute-bound models get every core.
SMALL_MODEL_BYTES = 8 * 1024 * 1024
MODEL_READY_TIMEOUT_S = 900.0

MODEL_NOT_SERVED = "ModelServerUnavailable"
MODEL_MISMATCH = "ModelMismatch"
MODEL_SERVER_FAILED = "ModelServerFailed"
# How often a wait for answers checks that the model server still runs (seconds).
LIVENESS_INTERVAL_S = 0.5


class Deleted(Exception):
    """The evaluation was deleted (or marked for deletion) while running."""


# --------------------------------------------------------------------- status


def set_status(
    records: RecordStore,
    account: str,
    name: str,
    *,
    phase: Phase,
    generation: int,
    progress: Progress | None = None,
    metrics: MetricsSummary | None = None,
    results_uri: str | None = None,
    model_digest: str | None = None,
    ready: tuple[ConditionStatus, str, str] | None = None,
    timings: Timings | None = None,
    gates: tuple[ConditionStatus, str, str] | None = None,
) -> None:
    """Write the evaluation's status fields (and only those): progress, results, and the
    phase with the Ready condition `(status, reason, message)` and observedGeneration
    (`dyff.lifecycle.settle`; without `ready`, the phase alone). `shardsReused` counts
    what existed before the evaluation started: the plan the controller computed for this
    generation, or the first writer's, is kept on later writes."""

    def change(ev: Evaluation) -> None:
        if ev.metadata.deletion_timestamp is not None:
            raise Deleted(name)
        st = ev.status
        if progress is not None:
            new = progress.model_copy()
            if st.progress is not None and st.observed_generation == generation:
                new.shards_reused = st.progress.shards_reused
            st.progress = new
        if metrics is not None:
            st.metrics = metrics
        if results_uri is not None:
            st.results_uri = results_uri
        if model_digest is not None:
            st.model_digest = model_digest
        if timings is not None:
            st.timings = timings
        if gates is not None:
            st.set_condition(GATES_CONDITION, *gates, generation)
        if ready is not None:
            status, reason, message = ready
            settle(st, phase, status, reason, message, generation)
        else:
            st.phase = phase

    try:
        records.mutate(Evaluation, account, name, change)
    except NotFound:
        raise Deleted(name) from None


# ------------------------------------------------------------------- serving


class CountingClient:
    """The model client (dyff's own, or a v1 `ServiceClient`), counting inference requests
    and images (for tests and benches)."""

    def __init__(self, client: ModelClient | ServiceClient | InProcessModel) -> None:
        self.client = client
        self.calls = 0
        self.images = 0
        self._lock = threading.Lock()

    def metadata(self) -> dict[str, Any]:
        return self.client.metadata()

    def classify(self, images: Any, top_k: int) -> TopK:
        with self._lock:
            self.calls += 1
            self.images += len(images)
        return self.client.classify(images, top_k)


def server_threads(bento_bytes: int | None, cpus: int | None = None) -> int:
    cpus = cpus or os.cpu_count() or 1
    if bento_bytes is not None and bento_bytes < SMALL_MODEL_BYTES:
        return 1
    return cpus


def _reaper(token: str, env_name: str) -> None:  # pragma: no cover - runs in its own process
    """Wait for EOF on stdin (the run ended, however), then kill every process whose
    environment carries `token` — the server and its workers — with their children."""
    import sys

    import psutil

    sys.stdin.buffer.read()
    for _ in range(3):
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(env_name) == token:
                    found.append(proc)
        if not found:
            return
        family = set(found)
        for proc in found:
            with contextlib.suppress(psutil.Error):
                proc.suspend()  # no new workers while we collect
        for proc in found:
            with contextlib.suppress(psutil.Error):
                family.update(proc.children(recursive=True))
        for proc in family:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(list(family), timeout=5)


@contextlib.contextmanager
def reaper(token: str) -> Iterator[None]:
    """A process, in a session of its own, that kills the servers marked with `token` once
    this process ends — also by SIGKILL, which no `finally` survives."""
    read_end, write_end = os.pipe()
    source = (
        "import contextlib, sys\n"
        + inspect.getsource(_reaper)
        + "\n_reaper(sys.argv[1], sys.argv[2])\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", source, token, SERVER_TOKEN_ENV],
        stdin=read_end,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.close(read_end)
    try:
        yield
    finally:
        os.close(write_end)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)


@dataclass
class ServerOptions:
    """Knobs of the server a run starts; None leaves the service's default."""

    torch_threads: int | None = None
    chunk_size: int | None = None  # images per forward pass (default: spec.run.batchSize)
    # With several torch threads, idle OpenMP threads sleep instead of spinning on the
    # cores the client needs (OMP_WAIT_POLICY=PASSIVE).
    omp_passive: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = 300.0
    # dyff's own model with no warm server running: run it in this process
    # (dyff.runtime.in_process) instead of starting `bentoml serve`; then ask the warm
    # pool, if any, to start the server for the next evaluation.
    in_process: bool = False


@dataclass
class Served:
    """A model server for the run: its URL; how it ended (None while it runs, or when it
    is not ours to watch); what cleans its messages of this machine's paths."""

    url: str
    exited: Callable[[], str | None] = lambda: None
    scrub: Callable[[str], str] = lambda text: text
    warm: bool = False  # an already running server of `dyff up`'s warm pool
    model: InProcessModel | None = None  # the model in this process, instead of a URL


@contextlib.contextmanager
def model_server(
    inputs: Inputs,
    blobs: BlobStore,
    scratch: Path,
    *,
    model_url: str | None,
    options: ServerOptions | None = None,
) -> Iterator[str]:
    """The base URL of a server for the evaluation's model: `model_url` if given, else
    the model's Bento (or image) served on loopback until the block ends."""
    with serve_model(inputs, blobs, scratch, model_url=model_url, options=options) as served:
        yield served.url


@contextlib.contextmanager
def serve_model(
    inputs: Inputs,
    blobs: BlobStore,
    scratch: Path,
    *,
    model_url: str | None,
    options: ServerOptions | None = None,
) -> Iterator[Served]:
    """`model_server`, yielding the Served (URL, liveness, scrubbing)."""
    from dyff.runtime.serve import (
        WARM_POOL_ENV,
        ServerFailed,
        WarmUnavailable,
        lease_warm,
        prestart_warm,
        scrub,
        serving,
        start_timeout,
        wait_ready,
    )

    model = inputs.model
    user = serves_user_code(model)
    if model_url:
        try:
            wait_ready(model_url, start_timeout() if user else MODEL_READY_TIMEOUT_S, interval=0.5)
        except TimeoutError as exc:
            raise WorkloadFailed(MODEL_NOT_SERVED, str(exc)) from None
        yield Served(model_url)
        return
    if model.spec.source.form == "image":
        with _serve_image(inputs, scratch) as served:
            yield served
        return
    options = options or ServerOptions()
    archive = blobs.download(
        layout.bento_key(model.account, inputs.model_digest), scratch / "model.bento"
    )
    token = uuid.uuid4().hex
    env = {SERVER_TOKEN_ENV: token, **options.extra_env}
    knobs: dict[str, int | str | None] = {}
    if not user:
        threads = options.torch_threads or server_threads(archive.stat().st_size)
        if threads > 1 and options.omp_passive:
            env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        # Forward passes of the run's batch size, however many requests the server
        # merges: the batch size a user picks is the one their model's memory was sized for.
        knobs = {
            "DYFF_TOP_K": inputs.top_k,
            "DYFF_TORCH_THREADS": threads,
            "DYFF_CHUNK_SIZE": options.chunk_size or inputs.evaluation.spec.run.batch_size,
        }
    timeout = start_timeout() if user else options.startup_timeout
    pool = os.environ.get(WARM_POOL_ENV)
    in_process = options.in_process and not user
    request = {
        "account": model.account, "model": model.name, "digest": inputs.model_digest,
        "bento": str(archive), "knobs": knobs, "userCode": user,
        "env": {k: v for k, v in env.items() if k != SERVER_TOKEN_ENV},
        "startupTimeout": timeout,
    }  # fmt: skip
    if pool:
        # `dyff up` keeps servers warm: lease one with exactly these settings (the pool
        # starts it with the same code when it has none; a `peek` only takes a running one).
        with contextlib.ExitStack() as stack:
            leased = None
            try:
                lease = {**request, "mode": "peek"} if in_process else request
                leased = stack.enter_context(lease_warm(pool, lease, timeout))
            except WarmUnavailable as exc:
                if not in_process:
                    log.warning("warm pool unavailable (%s); starting a server here", exc)
            except ServerFailed as exc:
                if not user:
                    raise
                raise WorkloadFailed(MODEL_SERVER_FAILED, str(exc)) from None
            if leased is not None:
                bento = leased.bento
                yield Served(
                    leased.url,
                    exited=leased.exit_message,
                    scrub=lambda text: scrub(text, bento, scratch),
                    warm=not leased.started,
                )
                return
    if in_process:
        from dyff.models import unpack_bento

        target = unpack_bento(archive, scratch / "bento")  # with the current service.py
        try:
            yield Served(
                "in-process",
                model=InProcessModel(
                    target,
                    top_k=int(knobs["DYFF_TOP_K"] or inputs.top_k),
                    threads=int(knobs["DYFF_TORCH_THREADS"] or 1),
                    chunk_size=int(knobs["DYFF_CHUNK_SIZE"] or 1),
                ),
            )
        finally:
            if pool:  # the next evaluation of this model finds its server warm
                prestart_warm(pool, request)
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(reaper(token))
        try:
            server = stack.enter_context(
                serving(
                    archive,
                    bentoml_home=scratch / "bentoml-home",
                    workdir=scratch / "serve",
                    knobs=knobs,
                    startup_timeout=timeout,
                    extra_env=env,
                    user_code=user,
                )
            )
        except ServerFailed as exc:
            if not user:
                raise  # dyff's own service failing is ours: a crash, retried
            raise WorkloadFailed(MODEL_SERVER_FAILED, str(exc)) from None
        yield Served(
            server.url,
            exited=server.exit_message,
            scrub=lambda text: scrub(text, server.bento, scratch),
        )


@contextlib.contextmanager
def _serve_image(inputs: Inputs, scratch: Path) -> Iterator[Served]:
    """An image-form model in a locked-down container of this machine's engine, or
    ModelServerUnavailable saying why there is none."""
    from dyff.models import local_image_support

    model = inputs.model
    support = local_image_support()
    if support.runtime not in ("docker", "podman"):
        # On Kubernetes the controller runs the container and passes its URL.
        why = (
            "the controller did not pass its model server's URL"
            if support.runtime == "kubernetes"
            else support.message
        )
        raise WorkloadFailed(
            MODEL_NOT_SERVED,
            f"image-form model {model.name} needs its container ({MODEL_URL_ENV} unset): {why}",
        )
    from dyff.runtime.container import ContainerFailed, run_container
    from dyff.runtime.serve import start_timeout

    assert support.runtime is not None and model.spec.source.image is not None
    try:
        with run_container(
            support.runtime,
            model.spec.source.image.reference,
            model.spec.source.image.port,
            resources=model.spec.resources,
            startup_timeout=start_timeout(),
        ) as container:
            yield Served(container.url, exited=container.exit_message)
    except ContainerFailed as exc:
        raise WorkloadFailed(MODEL_SERVER_FAILED, str(exc)) from None


def check_served(inputs: Inputs, meta: dict[str, Any]) -> Resize | None:
    """The served model must be the recorded one (same labels); returns the resize its
    processor lets the client do (None: send images as they are)."""
    served = meta.get("labels")
    recorded = inputs.model.status.labels
    if served is not None and recorded is not None and list(served) != list(recorded):
        raise WorkloadFailed(MODEL_MISMATCH, "the served model's labels are not the Model's")
    return Resize.from_metadata(meta)


def with_served_labels(inputs: Inputs, labels: list[str]) -> Inputs:
    """Inputs for a model whose labels ingestion could not read (a user's service on
    Kubernetes, an image): its served labels, matched to the dataset's now, exactly as if
    they had been recorded (LabelMismatch when they cannot be)."""
    model = inputs.model.model_copy(deep=True)
    model.status.labels = list(labels)
    return inputs_for(inputs.evaluation, model, inputs.dataset, inputs.shards)


# ------------------------------------------------------------------ inference


@dataclass
class _ShardWork:
    shard: Shard
    row_ids: np.ndarray
    labels: np.ndarray
    parts: list[TopK | None] = field(default_factory=list)  # one per request, in order
    remaining: int = 0  # requests sent and not answered yet
    sealed: bool = False  # every request of the shard has been sent


def _load_shard(inputs: Inputs, blobs: BlobStore, shard: Shard) -> tuple[Any, list[bytes]]:
    data = blobs.get(layout.shard_key(inputs.dataset.account, shard.sha256))
    # The cache key trusts the digest: make sure these are the bytes it names.
    if hashlib.sha256(data).hexdigest() != shard.sha256:
        raise RuntimeError(f"shard {shard.sha256} does not match its digest")
    table = read_shard(data)
    return table, table.column("image").to_pylist()


def infer_shards(
    inputs: Inputs,
    blobs: BlobStore,
    client: CountingClient,
    shards: Sequence[Shard],
    *,
    batch_size: int,
    concurrency: int,
    resize: Resize | None,
    on_shard: Callable[[Shard], None],
    batches: Callable[[list[bytes]], Iterator[Any]] | None = None,
    alive: Callable[[], None] = lambda: None,
    variant: Variant = CLEAN,
) -> None:
    """Stream `shards` through the model and store each shard's prediction file. Requests
    hold up to `batch_size` images (fewer when they are large) and run across shard
    boundaries, `concurrency` in flight. `batches` turns a shard's encoded images into
    requests (default: decoded pixels, `image_batches`); `alive` raises when the server
    is gone, and is called while answers are awaited. A perturbed `variant` sends each
    image corrupted (`robustness.perturbed_png`) and stores under the variant's key."""
    if batches is None:

        def batches(images: list[bytes]) -> Iterator[Any]:
            return image_batches(images, batch_size, resize)

    top_k = inputs.top_k
    n_labels = len(inputs.model.status.labels or inputs.label_names)
    want_k = min(top_k, n_labels)

    def finish(work: _ShardWork) -> None:
        parts = [p for p in work.parts if p is not None]
        indices = np.concatenate([p.indices for p in parts])
        scores = np.concatenate([p.scores for p in parts])
        if indices.shape[1] < want_k:
            raise RuntimeError(f"model answered top-{indices.shape[1]}, expected {want_k}")
        table = prediction_table(work.row_ids, work.labels, indices, scores, inputs.label_map)
        data = encode_predictions(table)
        key = inputs.prediction_key(work.shard, variant)
        blobs.put(key, data, sha256=hashlib.sha256(data).hexdigest())
        on_shard(work.shard)

    pending: deque[tuple[_ShardWork, int, Future[TopK]]] = deque()

    def complete_oldest() -> None:
        work, i, future = pending[0]
        while True:
            try:
                answer = future.result(timeout=LIVENESS_INTERVAL_S)
                break
            except FutureTimeout:
                alive()
        pending.popleft()
        work.parts[i] = answer
        work.remaining -= 1
        if work.sealed and work.remaining == 0:
            finish(work)

    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="dyff-eval")
    failed = True
    try:
        for shard in shards:
            table, images = _load_shard(inputs, blobs, shard)
            work = _ShardWork(
                shard, table.column("row_id").to_numpy(), table.column("label").to_numpy()
            )
            if variant.kind is not None:
                images = list(robustness.perturbed_images(images, work.row_ids, variant))
            # Decoding happens here, while earlier requests are in flight.
            for batch in batches(images):
                while len(pending) >= concurrency:
                    complete_oldest()
                work.parts.append(None)
                work.remaining += 1
                future = pool.submit(client.classify, batch, top_k)
                pending.append((work, len(work.parts) - 1, future))
            work.sealed = True
            if work.remaining == 0:  # an empty shard, or every answer is in already
                finish(work)
        while pending:
            complete_oldest()
        failed = False
    finally:
        for _, _, future in pending:
            future.cancel()
        # After a failure, requests still in flight are not waited for: the server they
        # wait on is stopped next, which ends them.
        pool.shutdown(wait=not failed, cancel_futures=True)


# ------------------------------------------------------------------------ run


@dataclass
class RunReport:
    """What one run did (for tests and benchmarks)."""

    plan: Plan
    inferred: list[str] = field(default_factory=list)  # shard digests inferred by this run
    # Perturbed shards inferred by this run, by criterion (`perturbation KIND/SEVERITY`).
    perturbed: dict[str, list[str]] = field(default_factory=dict)
    inference_calls: int = 0
    images: int = 0
    metrics: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _present(inputs: Inputs, blobs: BlobStore, plan: Plan) -> set[str]:
    """The plan's prediction files that exist (one listing per variant)."""
    keys: set[str] = set()
    for part in plan.parts():
        keys.update(info.key for info in blobs.list(inputs.prediction_prefix(part.variant) + "/"))
    return keys & plan.all_keys()


def _gates(ev: Evaluation, doc: dict[str, Any]) -> tuple[ConditionStatus, str, str] | None:
    """The GatesPassed condition of an evaluation with quality gates."""
    if ev.spec.criteria is None or not ev.spec.criteria.gates:
        return None
    gates = doc["criteria"]["gates"]
    if gates["passed"]:
        return ("True", "GatesPassed", gates["message"])
    return ("False", "GatesFailed", gates["message"])


def _write_results(
    inputs: Inputs, blobs: BlobStore, plan: Plan, scratch: Path
) -> tuple[dict[str, Any], str]:
    ev = inputs.evaluation
    uid = ev.metadata.uid or ""
    paths = results.local_paths(blobs, plan.keys, scratch / "predictions")
    model_labels = inputs.model.status.labels
    # Over the dataset's labels only: a prediction of a model label it lacks is wrong.
    # A batch of rows at a time: memory does not grow with the rows.
    doc = results.stream_metrics(
        paths,
        inputs.dataset_labels,
        ev.spec.metrics,
        expected_rows=plan.rows_total,
        top5=top5_answerable(inputs.top_k, len(model_labels) if model_labels else None),
        model_classes=inputs.model_classes,
    )
    doc.update(
        modelDigest=inputs.model_digest,
        inferenceDigest=inputs.inference_digest,
        topK=inputs.top_k_kept,  # what the files hold: topK clamped to the model's classes
        shards=plan.shards_total,
        **inputs.label_report(),
    )
    # Intervals, slices and gates (`spec.criteria`; intervals for every evaluation): from
    # the prediction files just used, no inference.
    doc["criteria"] = criteria.criteria_results(
        blobs,
        plan.keys,
        inputs.dataset,
        inputs.dataset_labels,
        ev.spec.criteria,
        metrics_doc=doc,
        cache_dir=scratch / "predictions",
    )
    robust = robustness.robustness_results(inputs, blobs, plan, doc, scratch)
    if robust is not None:
        doc["robustness"] = robust
    blobs.put(layout.manifest_key(ev.account, ev.name, uid), encode_json(manifest_doc(plan)))
    blobs.put(layout.metrics_key(ev.account, ev.name, uid), encode_json(doc))
    return doc, blobs.uri(layout.evaluation_prefix(ev.account, ev.name, uid))


def run_evaluation(
    records: RecordStore,
    blobs: BlobStore,
    account: str,
    name: str,
    *,
    scratch_dir: str | Path | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    model_url: str | None = None,
    server: ServerOptions | None = None,
    started_at: float | None = None,
) -> RunReport | None:
    """Run (or finish) one evaluation; None if it is being deleted. WorkloadFailed marks
    it Failed and propagates. `started_at` (epoch seconds): when the workload started,
    for `status.timings.queuedS` (default: now)."""
    started_at = time.time() if started_at is None else started_at
    ev = records.get(Evaluation, account, name)
    if ev.metadata.deletion_timestamp is not None:
        log.info("%s/%s is being deleted; nothing to do", account, name)
        return None
    generation = ev.metadata.generation
    indexed = shard_index is not None and shard_count is not None
    started = time.perf_counter()
    try:
        inputs = resolve(records, blobs, ev)
        if scratch_dir:
            Path(scratch_dir).mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(dir=scratch_dir, prefix="evaluate-") as tmp,
            contextlib.ExitStack() as stack,  # the model server, if one is started
        ):
            scratch = Path(tmp)
            served = _Server(inputs, blobs, scratch, stack, model_url=model_url, options=server)
            if serves_user_code(inputs.model) and inputs.model.status.labels is None:
                # The reuse key depends on the labels: ask the service before planning.
                inputs = with_served_labels(inputs, served.service().labels)
            plan = plan_inputs(inputs, blobs)
            outcome = RunReport(plan=plan)
            # The dataset's own images first, then each perturbation and severity.
            todo = [(part.variant, part.to_infer) for part in plan.parts()]
            if indexed:
                assert shard_index is not None and shard_count is not None
                todo = [(v, assigned(t, plan.shards, shard_index, shard_count)) for v, t in todo]
            to_infer = sum(len(t) for _, t in todo)
            done = plan.reused_keys()
            progress = plan.progress(done)
            set_status(
                records, account, name,
                phase=Phase.RUNNING, generation=generation, progress=progress,
                model_digest=inputs.model_digest,
                ready=("False", "Running", f"{progress.shards_reused}/{progress.shards_total} "
                       f"shards reused, {to_infer} to infer"),
            )  # fmt: skip
            log.info(
                "%s/%s: %d shards, %d reused, %d to infer here",
                account, name, progress.shards_total, progress.shards_reused, to_infer,
            )  # fmt: skip
            if to_infer:
                _infer(
                    inputs, blobs, records, plan, todo, done, outcome, served,
                    indexed=indexed, generation=generation,
                )  # fmt: skip
            stack.close()  # the server is no longer needed
            outcome.timings["inference_s"] = time.perf_counter() - started
            t_metrics = time.perf_counter()
            present = _present(inputs, blobs, plan)  # one listing, not one per shard
            missing = plan.all_keys() - present
            if missing and indexed:
                log.info("%s/%s: %d shards left to other pods", account, name, len(missing))
                return outcome
            if missing:
                raise RuntimeError(f"{len(missing)} shards have no predictions after inference")
            doc, uri = _write_results(inputs, blobs, plan, scratch)
            outcome.timings["metrics_s"] = time.perf_counter() - t_metrics
        outcome.metrics = doc
        ordered = ev.metadata.creation_timestamp
        timings = Timings(
            queued_s=max(0.0, started_at - ordered.timestamp()) if ordered else 0.0,
            model_start_s=0.0 if served.warm else outcome.timings.get("serve_start_s", 0.0),
            inference_s=outcome.timings.get("stream_s", 0.0),
            metrics_s=outcome.timings["metrics_s"],
        )
        set_status(
            records, account, name,
            phase=Phase.COMPLETE, generation=generation,
            progress=plan.progress(plan.all_keys()),
            metrics=MetricsSummary.model_validate(
                {**summary(doc), "accuracyInterval": criteria.accuracy_interval(doc)}
            ),
            results_uri=uri, model_digest=inputs.model_digest, timings=timings,
            ready=("True", "Complete", f"{plan.rows_total} rows, {plan.shards_total} shards "
                   f"({plan.reused} reused)"),
            gates=_gates(ev, doc),
        )  # fmt: skip
        outcome.timings["total_s"] = time.perf_counter() - started
        return outcome
    except WorkloadFailed as exc:
        with contextlib.suppress(Deleted):
            set_status(
                records, account, name, phase=Phase.FAILED, generation=generation,
                ready=("False", exc.reason, exc.message),
            )  # fmt: skip
        raise
    except Deleted:
        log.info("%s/%s was deleted while running; stopped", account, name)
        return None


class _Server:
    """The run's model server, started on first use and stopped with `stack`; for a user's
    service, the v1 client that talks to it."""

    def __init__(
        self,
        inputs: Inputs,
        blobs: BlobStore,
        scratch: Path,
        stack: contextlib.ExitStack,
        *,
        model_url: str | None,
        options: ServerOptions | None,
    ) -> None:
        self.inputs, self.blobs, self.scratch, self.stack = inputs, blobs, scratch, stack
        self.model_url, self.options = model_url, options
        self.user = serves_user_code(inputs.model)
        self._served: Served | None = None
        self._service: ServiceClient | None = None
        self.start_s = 0.0
        self.warm = False  # leased from `dyff up`'s warm pool, already running

    def get(self) -> Served:
        if self._served is None:
            t0 = time.perf_counter()
            self._served = self.stack.enter_context(
                serve_model(
                    self.inputs,
                    self.blobs,
                    self.scratch,
                    model_url=self.model_url,
                    options=self.options,
                )
            )
            self.start_s = time.perf_counter() - t0
            self.warm = self._served.warm
        return self._served

    def service(self) -> ServiceClient:
        """The v1 client of the served model, its `/metadata` checked."""
        if self._service is None:
            served = self.get()
            self._service = self.stack.enter_context(
                ServiceClient(served.url, exited=served.exited, scrub=served.scrub)
            )
            try:
                self._service.metadata()
            except ServiceError as exc:
                raise WorkloadFailed(exc.reason, exc.message) from None
        return self._service

    def alive(self) -> None:
        """Raise if the server we started has exited (a user's: WorkloadFailed)."""
        ended = self.get().exited()
        if ended is None:
            return
        if self.user:
            raise WorkloadFailed(MODEL_SERVER_FAILED, ended)
        raise RuntimeError(ended)


def _infer(
    inputs: Inputs,
    blobs: BlobStore,
    records: RecordStore,
    plan: Plan,
    todo: list[tuple[Variant, list[Shard]]],
    done: set[str],
    outcome: RunReport,
    server: _Server,
    *,
    indexed: bool,
    generation: int,
) -> None:
    ev = inputs.evaluation
    run = ev.spec.run
    served = server.get()
    outcome.timings["serve_start_s"] = server.start_s
    with contextlib.ExitStack() as stack:
        batches: Callable[[list[bytes]], Iterator[Any]] | None = None
        if server.user:
            # Protocol v1 only: the original image files, answers in label names.
            service = server.service()
            client = CountingClient(service)
            check_served(inputs, service.metadata())
            resize = None

            def batches(images: list[bytes]) -> Iterator[Any]:
                return encoded_batches(images, run.batch_size)
        elif served.model is not None:  # dyff's own model, in this process
            client = CountingClient(served.model)
            resize = check_served(inputs, client.metadata())
        else:
            http = stack.enter_context(ModelClient(served.url, concurrency=run.concurrency))
            client = CountingClient(http)
            resize = check_served(inputs, client.metadata())

        variant = CLEAN  # the one being inferred (the loop below sets it)

        def shard_done(shard: Shard) -> None:
            if variant.kind is None:
                outcome.inferred.append(shard.sha256)
            else:
                outcome.perturbed.setdefault(variant.criterion, []).append(shard.sha256)
            key = inputs.prediction_key(shard, variant)
            # Pods of an Indexed Job share the record: count what exists, not what
            # this pod did, so their writes never undo each other.
            now = _present(inputs, blobs, plan) if indexed else done | {key}
            done.add(key)
            set_status(
                records, ev.account, ev.name,
                phase=Phase.RUNNING, generation=generation, progress=plan.progress(now),
            )  # fmt: skip

        t1 = time.perf_counter()
        try:
            for variant, shards in todo:
                if shards:
                    infer_shards(
                        inputs, blobs, client, shards,
                        batch_size=run.batch_size, concurrency=run.concurrency, resize=resize,
                        on_shard=shard_done, batches=batches, alive=server.alive, variant=variant,
                    )  # fmt: skip
        except ServiceError as exc:
            # The service's answer broke the protocol or it failed: the user's error.
            server.alive()  # its exit (with its log) says more than a refused connection
            raise WorkloadFailed(exc.reason, exc.message) from None
        finally:
            outcome.inference_calls = client.calls
            outcome.images = client.images
        outcome.timings["stream_s"] = time.perf_counter() - t1


def run(config: WorkloadConfig) -> None:
    # One line per request would drown the workload's own log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    records, blobs = config.stores()
    run_evaluation(
        records,
        blobs,
        config.account,
        config.name,
        scratch_dir=config.scratch_dir,
        shard_index=config.shard_index,
        shard_count=config.shard_count,
        model_url=os.environ.get(MODEL_URL_ENV) or None,
        server=ServerOptions(
            torch_threads=int(os.environ.get(MODEL_THREADS_ENV) or 0) or None,
            in_process=os.environ.get(IN_PROCESS_ENV) == "1",
        ),
        started_at=_process_started(),
    )


def _process_started() -> float:
    """When this workload started (epoch seconds): when `dyff up`'s spare process was handed
    it (DYFF_WORKLOAD_STARTED), else when this process started (its imports count as time
    queued)."""
    with contextlib.suppress(KeyError, ValueError):
        return float(os.environ["DYFF_WORKLOAD_STARTED"])
    import psutil

    try:
        return float(psutil.Process().create_time())
    except psutil.Error:
        return time.time()


def preload() -> None:
    """For a spare workload (controller.executors.spare): the imports a run of dyff's own
    model in this process needs, done before there is work."""
    if os.environ.get(IN_PROCESS_ENV) == "1":
        from dyff.runtime.in_process import preload as preload_model

        preload_model()


def main(argv: list[str] | None = None) -> int:
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
