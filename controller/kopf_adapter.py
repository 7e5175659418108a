"""The kopf controller: thin handlers around the shared reconcile pass.

For each kind (Model, Dataset, Evaluation):

- create / update / resume: make the record agree with the CR (`sync.adopt`: a CR
  made by kubectl or Argo CD gets its record; a spec changed in the CR goes into the
  record), run `reconcile_one`, and mirror the record's status into the CR;
- delete (kopf's finalizer `dyff.io/cleanup` holds the CR): mark the record deleting
  and run passes until `reconcile_one` reports it finalized (work stopped, blobs
  deleted, record gone); kopf then removes the finalizer;
- a timer, only while the CR is in a phase its kind's lifecycle (`dyff.lifecycle`,
  through the registry `controller.reconcile.KINDS`) calls neither final nor waiting
  (kopf's `when`), re-runs the pass for what no event announces: an upload landing in
  the blob store; a slower one does while it waits (for a dependency to become Ready);
- every watch event updates what the record sync knows of the CRs.

kopf writes nothing to a CR the record sync made: the sync applies it with kopf's
finalizer, and kopf's diff base (the last handled spec, labels and annotations) is kept
in this process (`MemoryDiffBase`), not in an annotation. Either write was a PATCH and
one more watch event per CR for kopf and the sync to process.

A Job labelled with its owner re-runs the owner's pass as soon as it changes. The
record sync (`controller.sync`) runs beside the handlers, started and stopped with the
operator. Handlers for one object never overlap the sync's writes for it
(`KeyLocks`); blocking work (record store, blob store, Kubernetes client) runs in a
thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kopf
from pydantic import ValidationError

from controller.executors import Executor
from controller.executors.manifests import LABEL_KIND, LABEL_NAME, MANAGED_BY, MANAGER
from controller.kube import KubeApi, custom_object_path
from controller.reconcile import KINDS, Result, reconcile_one
from controller.reconcilers.evaluation import waiting_for
from controller.sync import KeyLocks, RecordSync, adopt, plain
from dyff.errors import DyffError, NotFound
from dyff.schema import (
    GROUP,
    VERSION,
    Dataset,
    Entity,
    Evaluation,
    Model,
    entity_type,
)
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

log = logging.getLogger("dyff.controller.kopf")

FINALIZER = "dyff.io/cleanup"
# How long a stopping controller waits for the passes in flight.
DRAIN_S = 20.0
# kopf's own bookkeeping lives in annotations under this prefix (not in status: the
# generated CRD schemas prune unknown status fields).
KOPF_PREFIX = "kopf.dyff.io"
# The timer of phases that only another object's change ends (a kind's `waiting`) is
# this much slower.
WAITING_SLOWDOWN = 6
T = TypeVar("T")


class Controller:
    """Everything the handlers share: stores, executor, Kubernetes API, record sync."""

    def __init__(
        self,
        records: RecordStore,
        blobs: BlobStore,
        executor: Executor,
        api: KubeApi,
        *,
        reconcile_interval: float = 10.0,
        sync_interval: float = 0.25,
        resync_interval: float = 300.0,
        # Passes mostly wait for the record store (on Datastore, several round trips of
        # tens of ms each), so more of them than cores run side by side.
        workers: int = 16,
    ) -> None:
        self.records = records
        self.blobs = blobs
        self.executor = executor
        self.api = api
        self.reconcile_interval = reconcile_interval
        self.locks = KeyLocks()
        self.sync = RecordSync(
            records,
            api,
            locks=self.locks,
            finalize=self.finalize,
            on_settled=self.dependency_settled,
            on_upload=self.upload_landed,
            interval=sync_interval,
            resync_interval=resync_interval,
            finalizers=(FINALIZER,),
        )
        self.diffbase = MemoryDiffBase()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="dyff-reconcile")
        self._stop = asyncio.Event()
        self._sync_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Controller:
        """The controller of the Deployment (config/base): stores and executor from
        DYFF_* variables; the Kubernetes API from the Pod's ServiceAccount."""
        from dyff.config import load_settings
        from dyff.stores import open_blobs, open_records

        settings = load_settings()
        records, blobs = open_records(settings.records), open_blobs(settings.blobs)
        api = KubeApi.from_environment()
        executor: Executor
        kind = environ.get("DYFF_EXECUTOR", "kubernetes")
        if kind == "kubernetes":
            from controller.executors.kubernetes import JobSettings, KubernetesExecutor

            executor = KubernetesExecutor(api, records, JobSettings.from_env(environ))
        elif kind == "local":
            from pathlib import Path

            from controller.executors.local import LocalExecutor

            executor = LocalExecutor(
                settings.records, settings.blobs, Path(settings.data_dir) / "work"
            )
        else:
            raise ValueError(f"DYFF_EXECUTOR must be kubernetes or local, not {kind!r}")
        return cls(
            records,
            blobs,
            executor,
            api,
            reconcile_interval=float(environ.get("DYFF_RECONCILE_INTERVAL", "10")),
            sync_interval=float(environ.get("DYFF_SYNC_INTERVAL", "0.25")),
        )

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ---- lifecycle (kopf startup / cleanup)

    async def start(self) -> None:
        if self._sync_task is None:
            self._stop.clear()
            self._sync_task = asyncio.create_task(self.sync.run(self._stop), name="dyff-sync")

    async def stop(self) -> None:
        self._stop.set()
        if self._sync_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
            self._sync_task = None

    def close(self) -> None:
        # Queued passes are dropped (a restart redoes them); running ones are waited for.
        self.sync.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.executor.close()

    # ---- the passes

    async def _pass(self, kind: type[Entity], account: str, name: str) -> Result:
        """reconcile_one (the caller holds the object's lock). A pass that finalized the
        record deletes its CR too, whoever marked the record: were the CR left behind, it
        would bring the record back."""
        result = await self._call(
            reconcile_one, self.records, self.blobs, self.executor, kind, account, name
        )
        if result.finalized:
            key = (kind.kind_name, account, name)
            self.sync.forget(key)
            await self._call(self.api.delete, custom_object_path(*key))
        return result

    async def reconcile(
        self, kind: type[Entity], account: str, name: str, *, cr_lags: bool = False
    ) -> Result:
        """One reconcile pass, then the record's status into the CR: a status the pass
        wrote goes by the record sync's feed; here, a record the sync has not pushed yet,
        or one whose CR's status is behind the CR's generation (`cr_lags`) though the
        pass changed nothing."""
        key = (kind.kind_name, account, name)
        async with self.locks.of(key):
            result = await self._pass(kind, account, name)
            if key in self.sync.pushed and (result.wrote_status or not cr_lags):
                # A status this pass wrote reaches the CR by the feed (read in batches
                # there, its generation translated then) rather than by one more record
                # read per pass here; with none, the CR is as current as it was.
                return result
            record = await self._call(self.records.find, kind, account, name)
        if record is not None:
            await self.sync.push(record, again=cr_lags)
        return result

    async def on_cr(self, kind: type[Entity], body: Mapping[str, Any]) -> None:
        """create / update / resume / timer: the record follows the CR, then a pass."""
        meta = body.get("metadata") or {}
        account, name = meta["namespace"], meta["name"]
        what = await self._adopt(kind, body, trust_sync=True)
        # An edit the record did not need (a default written out) still bumped the CR's
        # generation: its status must say so now, not at the next resync.
        observed = (body.get("status") or {}).get("observedGeneration") or 0
        cr_lags = observed < (meta.get("generation") or 0)
        result = await self.reconcile(kind, account, name, cr_lags=cr_lags)
        if what == "known" and result.outcome is None:
            # The record went away since the sync pushed it: the CR brings it back, as
            # adoption always does.
            await self._adopt(kind, body, trust_sync=False)
            await self.reconcile(kind, account, name, cr_lags=cr_lags)

    async def _adopt(self, kind: type[Entity], body: Mapping[str, Any], trust_sync: bool) -> str:
        """`adopt` under the object's lock; `trust_sync`: skip the record read when the
        CR is what the sync made of the record version it last pushed."""
        meta = body.get("metadata") or {}
        key = (kind.kind_name, meta["namespace"], meta["name"])
        async with self.locks.of(key):
            known = self.sync.agreed.get(key) if trust_sync else None
            try:
                what = await self._call(adopt, self.records, kind, body, known)
            except (ValidationError, DyffError) as exc:  # DyffError: an immutable field, ...
                why = refusal(exc)
                await self.sync.refuse(kind, body, why)
                raise kopf.PermanentError(f"{kind.kind_name} refused: {why}") from exc
        if what not in ("unchanged", "known"):
            log.info("record of %s %s/%s: %s", kind.kind_name, *key[1:], what)
        return what

    async def on_cr_deleted(self, kind: type[Entity], body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        account, name = meta["namespace"], meta["name"]
        await self._call(self._mark_deleting, kind, account, name)
        if not await self.finalize(kind, account, name):
            raise kopf.TemporaryError("cleanup is not finished yet", delay=2)

    def _mark_deleting(self, kind: type[Entity], account: str, name: str) -> None:
        with contextlib.suppress(NotFound):
            self.records.mark_deleting(kind, account, name)

    async def finalize(self, kind: type[Entity], account: str, name: str) -> bool:
        """Passes until the record is finalized (its work stopped, its blobs deleted, the
        record deleted) or gone. True when done."""
        async with self.locks.of((kind.kind_name, account, name)):
            for _ in range(3):
                result = await self._pass(kind, account, name)
                if result.outcome is None or result.finalized:
                    return True
        return False

    def upload_landed(self, kind: type[Entity], account: str, name: str) -> None:
        """The upload of a Model or Dataset landed (its ticket became Used): its pass runs
        now rather than at its next timer."""
        what = f"reconciling {kind.kind_name} {account}/{name} after its upload"
        self._in_background(self.reconcile(kind, account, name), what)

    def dependency_settled(self, kind: type[Entity], account: str, name: str) -> None:
        """A Model or Dataset became Ready or Failed: the evaluations that wait for it (of
        its account, and of any while it is public) go on now, not at their next timer."""
        what = f"waking the evaluations waiting for {kind.kind_name} {account}/{name}"
        self._in_background(self._wake_dependents(kind, account, name), what)

    async def _wake_dependents(self, kind: type[Entity], account: str, name: str) -> None:
        assert kind is Model or kind is Dataset
        for reader, evaluation in await self._call(waiting_for, self.records, kind, account, name):
            await self.reconcile(Evaluation, reader, evaluation)

    def _in_background(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        """Run `work` beside the handlers; a failure is logged (the timers remain the
        safety net)."""

        async def logged() -> None:
            try:
                await work
            except Exception:
                log.exception("%s", what)

        task = asyncio.create_task(logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def on_job(self, body: Mapping[str, Any]) -> None:
        """A Job of ours changed: run its owner's pass now rather than at the next timer."""
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(MANAGED_BY) != MANAGER:
            return
        try:
            kind = entity_type(labels.get(LABEL_KIND, ""))
        except ValueError:
            return
        if kind not in KINDS or not labels.get(LABEL_NAME):
            return
        await self.reconcile(kind, meta["namespace"], labels[LABEL_NAME])


def refusal(exc: Exception) -> str:
    """Why a CR's spec is refused, in a line: pydantic's errors as `field: message`."""
    if isinstance(exc, ValidationError):
        errors = exc.errors(include_url=False, include_input=False)
        parts = [".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in errors[:5]]
        return "invalid spec: " + "; ".join(parts)
    return f"refused: {exc}"


class MemoryDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base (each CR's essence as last handled: spec, labels, annotations),
    kept in this process instead of an annotation on the CR.

    The annotation costs a PATCH after every handled creation or change, and the watch
    event it causes, which kopf then processes too: for a CR the record sync creates,
    as much work again as the CR's own events. dyff needs the diff base only to tell an
    essential change (run the handler) from a status write (do not): create, update and
    resume run the same handler, so a process that has not seen a CR yet (a restart, a
    new leader) treating it as created is what resuming it did. Keyed by uid; forgotten
    when the CR is gone (`forget`) or being deleted (a deletion is detected without it).
    """

    def __init__(self) -> None:
        super().__init__()
        self._essences: dict[str, kopf.BodyEssence] = {}

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self._essences.get(body.metadata.uid or "")

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        uid = body.metadata.uid
        if uid and body.metadata.deletion_timestamp is None:
            self._essences[uid] = essence

    def forget(self, uid: str | None) -> None:
        self._essences.pop(uid or "", None)

    def __len__(self) -> int:
        return len(self._essences)


def configure(settings: kopf.OperatorSettings, diffbase: MemoryDiffBase | None = None) -> None:
    """kopf settings for dyff (also applied by the startup handler, with the
    controller's `diffbase`)."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = diffbase if diffbase is not None else MemoryDiffBase()
    # Ask the API server to end each watch before the client gives up on it, well
    # under the server's own request timeout (kube-apiserver: 30 min, proxies: less).
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.watching.connect_timeout = 10
    # Only dyff's Jobs are watched, filtered by the API server (the handler filters too).
    settings.watching.label_selectors["batch", "v1", "jobs"] = f"{MANAGED_BY}={MANAGER}"
    # Events for what needs a human (warnings, errors), not for every handled change.
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.execution.max_workers = 4  # kopf's own pool; dyff's work runs in its pools
    # SIGTERM: passes in flight finish (their writes, kopf's patches) before the exit,
    # inside the Deployment's 30 s grace period (config/base/deployment.yaml).
    settings.queueing.exit_timeout = DRAIN_S


def build_registry(
    controller: Controller, registry: kopf.OperatorRegistry | None = None
) -> kopf.OperatorRegistry:
    """Register dyff's handlers for `controller`: in `registry` (whose owner provides a
    login handler), or in a fresh one that logs in as the official client does
    (in-cluster ServiceAccount, else kubeconfig)."""
    reg = registry
    if reg is None:
        reg = kopf.OperatorRegistry()
        kopf.on.login(registry=reg, id="login")(kopf.login_via_client)
    ctl = controller

    @kopf.on.startup(registry=reg)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, ctl.diffbase)
        await ctl.start()

    @kopf.on.cleanup(registry=reg)
    async def cleanup(**_: Any) -> None:
        await ctl.stop()
        ctl.close()

    @kopf.on.probe(id="sync", registry=reg)
    def sync_probe(**_: Any) -> dict[str, Any]:
        return ctl.sync.health()

    for kind in KINDS:
        _register_kind(reg, ctl, kind)

    @kopf.on.event("batch", "v1", "jobs", labels={MANAGED_BY: MANAGER}, registry=reg, id="owner")
    async def job_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type is None:  # the initial listing: resume handlers run every owner anyway
            return
        await ctl.on_job(body)

    return reg


def _register_kind(reg: kopf.OperatorRegistry, ctl: Controller, kind: type[Entity]) -> None:
    res = (GROUP, VERSION, kind.plural)
    life = KINDS[kind].lifecycle

    @kopf.on.resume(*res, registry=reg, id="reconcile")
    @kopf.on.create(*res, registry=reg, id="reconcile")
    @kopf.on.update(*res, registry=reg, id="reconcile")
    async def reconcile_cr(body: kopf.Body, **_: Any) -> None:
        await ctl.on_cr(kind, plain(body))

    @kopf.on.delete(*res, registry=reg, id="finalize")
    async def finalize_cr(body: kopf.Body, **_: Any) -> None:
        await ctl.on_cr_deleted(kind, plain(body))

    def working(status: kopf.Status, **_: Any) -> bool:
        phase = status.get("phase")
        return not life.is_final(phase) and not life.is_waiting(phase)

    def waiting(status: kopf.Status, **_: Any) -> bool:
        return life.is_waiting(status.get("phase"))

    # Work in progress and uploads are watched often; evaluations waiting for their model
    # and dataset are woken when those settle (dependency_settled), so their timer is only
    # a safety net (a public model of another account, a missed event).
    @kopf.timer(
        *res,
        registry=reg,
        id="watch",
        interval=ctl.reconcile_interval,
        initial_delay=ctl.reconcile_interval,
        when=working,
    )
    async def watch(body: kopf.Body, **_: Any) -> None:
        await ctl.on_cr(kind, plain(body))

    @kopf.timer(
        *res,
        registry=reg,
        id="wait",
        interval=ctl.reconcile_interval * WAITING_SLOWDOWN,
        initial_delay=ctl.reconcile_interval * WAITING_SLOWDOWN,
        when=waiting,
    )
    async def wait(body: kopf.Body, **_: Any) -> None:
        await ctl.on_cr(kind, plain(body))

    @kopf.on.event(*res, registry=reg, id="observe")
    async def observe(type: str | None, event: kopf.RawEvent, **_: Any) -> None:
        # The raw event's object: plain JSON, cheaper to read than kopf's Body view.
        deleted = type == "DELETED"
        ctl.sync.observe(kind, event["object"], deleted=deleted)
        if deleted:
            ctl.diffbase.forget((event["object"].get("metadata") or {}).get("uid"))


async def run(
    controller: Controller,
    *,
    registry: kopf.OperatorRegistry | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
    liveness_endpoint: str | None = None,
) -> None:
    """kopf in standalone, cluster-wide mode (accounts are namespaces) until stopped."""
    settings = kopf.OperatorSettings()
    configure(settings, controller.diffbase)
    await kopf.operator(
        registry=build_registry(controller, registry),
        settings=settings,
        standalone=True,
        clusterwide=True,
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
