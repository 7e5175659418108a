"""Records and custom resources, kept in step both ways.

Records -> CRs (this module): the record store's change feed (`ChangeFeed`, polled
every `interval`) gives each record written since the last poll. A record becomes its
CR in the account's namespace (created if missing) by server-side apply with field
manager `dyff`, with the kopf adapter's finalizer already on it; a record marked
deleting deletes its CR and is finalized; the record's status is mirrored into the CR's
status subresource, its observedGeneration translated to the CR's generation.

CRs -> records (`adopt`, called by the kopf adapter): a CR with no record gets one; a
spec the user changed in the CR goes into the record, whose store bumps its generation.
A CR that dyff did not make (kubectl, Argo CD: `dyff.access.cr_owner`) makes its record
`dyff.io/managed-by: gitops`, which the HTTP API may read but not change or delete.

Who owns the spec is written down on both sides, so the two directions never undo each
other: a record whose spec came from its CR carries the annotation
`dyff.io/cr-generation`; a CR whose spec came from a record carries `dyff.io/record`
= `<record uid>/<record generation>`. The sync pushes a record's spec only when the
record did not take it from the CR and the CR has not yet received that record
generation; adoption copies a CR's spec only when no such push is pending. A user's
`kubectl edit` of a CR made from a shim record therefore wins, and so does a later
restart of that record through the shim.

Every step is idempotent and keyed: records by (kind, account, name), CRs by
(namespace, name). A restart loses nothing (the first poll reads the feed from the
start, compared with a fresh listing of the CRs) and duplicates nothing (apply is
create-or-update). What the sync knows of the CRs (`CrState`, digests only) comes from
that listing, its own writes and the kopf adapter's watch events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from controller.kube import ApiError, KubeApi, custom_object_path
from dyff.access import GIT_SOURCE, GITOPS, MANAGED_BY, cr_owner
from dyff.lifecycle import lifecycle
from dyff.schema import API_VERSION, RESOURCE_TYPES, Dataset, Entity, Model, UploadTicket
from dyff.stores.records import ChangeFeed, RecordStore

log = logging.getLogger("dyff.controller.sync")

# On a record: its spec (and labels) were copied from its CR, at this CR generation.
CR_GENERATION = "dyff.io/cr-generation"
# On a CR: its spec was applied from this record incarnation and generation (uid/gen).
RECORD_REF = "dyff.io/record"
# Annotations that belong to one side's machinery and are never copied across.
PRIVATE_ANNOTATION_PREFIXES = (
    "dyff.io/",
    "kopf.dyff.io/",
    "kopf.zalando.org/",
    "kubectl.kubernetes.io/",
    "argocd.argoproj.io/",
)

Key = tuple[str, str, str]  # (kind, account, name)
T = TypeVar("T")


def _digest(doc: Any) -> str:
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def spec_digest(kind: type[Entity], spec: Any) -> str:
    """The spec's identity after defaulting, so a CR spec and a record spec compare."""
    return _normalized_digest(kind, kind.spec_type, spec)


def status_digest(kind: type[Entity], status: Any) -> str:
    """Identity of a status, after defaulting: no status and an empty one are the same."""
    return _normalized_digest(kind, kind.status_type, status)


# raw digest -> digest after defaulting. One CR's watch events mostly repeat its spec
# and status, and validating them again is most of what observing an event costs.
_NORMALIZED: dict[tuple[str, str], str] = {}
_NORMALIZED_MAX = 8192


def _normalized_digest(kind: type[Entity], schema: type[Any], value: Any) -> str:
    raw = _digest(value or {})
    key = (f"{kind.kind_name}.{schema.__name__}", raw)
    found = _NORMALIZED.get(key)
    if found is None:
        try:
            found = _digest(schema.model_validate(value or {}).wire())
        except ValidationError:
            found = raw
        if len(_NORMALIZED) >= _NORMALIZED_MAX:
            _NORMALIZED.clear()  # crude, bounded; it refills with what is current
        _NORMALIZED[key] = found
    return found


def record_ref(entity: Entity) -> str:
    return f"{entity.metadata.uid}/{entity.metadata.generation}"


def public_annotations(annotations: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in annotations.items() if not k.startswith(PRIVATE_ANNOTATION_PREFIXES)}


def spec_push_pending(entity: Entity, cr_record_ref: str | None) -> bool:
    """The record holds a spec of its own (not copied from the CR) that the CR has not
    received yet."""
    return CR_GENERATION not in entity.metadata.annotations and cr_record_ref != record_ref(entity)


def cr_status(entity: Entity, cr_generation: int, current: bool) -> dict[str, Any]:
    """The record's status for the CR. Generations count differently on the two sides:
    a status (or condition) observed at the record's current generation, while the CR
    has the same spec, is observed at the CR's generation; anything older is behind it."""
    record_generation = entity.metadata.generation

    def translate(observed: int) -> int:
        if observed <= 0:
            return 0
        if current and observed == record_generation:
            return cr_generation
        return max(0, cr_generation - 1)

    status = entity.status.wire()
    status["observedGeneration"] = translate(status.get("observedGeneration", 0))
    for condition in status.get("conditions", []):
        condition["observedGeneration"] = translate(condition.get("observedGeneration", 0))
    return status


def cr_manifest(entity: Entity, finalizers: Iterable[str] = ()) -> dict[str, Any]:
    """What the sync applies to a record's CR: spec, labels, public annotations, which
    record generation the spec came from, and `finalizers` (the kopf adapter's: a CR
    born with it needs no PATCH from kopf to add it, nor the watch event that follows)."""
    meta: dict[str, Any] = {"name": entity.name, "namespace": entity.account}
    if entity.metadata.labels:
        meta["labels"] = dict(entity.metadata.labels)
    meta["annotations"] = {
        **public_annotations(entity.metadata.annotations),
        RECORD_REF: record_ref(entity),
    }
    if finalizers:
        meta["finalizers"] = list(finalizers)
    return {
        "apiVersion": API_VERSION,
        "kind": entity.kind,
        "metadata": meta,
        "spec": entity.spec.wire(),
    }


def plain(value: Any) -> Any:
    """A kopf body (mapping views all the way down) as plain JSON data."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def entity_from_cr(kind: type[Entity], body: Mapping[str, Any]) -> Entity:
    """The record a CR stands for (raises pydantic's ValidationError when invalid)."""
    doc = plain(body)
    meta = doc.get("metadata", {})
    cr_annotations = meta.get("annotations") or {}
    annotations = public_annotations(cr_annotations)
    annotations[CR_GENERATION] = str(meta.get("generation") or 1)
    owner = cr_owner(cr_annotations, meta.get("labels") or {}, RECORD_REF in cr_annotations)
    if owner is not None:
        annotations[MANAGED_BY], annotations[GIT_SOURCE] = GITOPS, owner
    record = {
        "apiVersion": API_VERSION,
        "kind": kind.kind_name,
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": meta.get("labels") or {},
            "annotations": annotations,
        },
        "spec": doc.get("spec") or {},
    }
    return kind.model_validate(record)


def agreement(entity: Entity, ref: str | None) -> str:
    """What adoption compares of a record (or of the record a CR stands for, with the
    CR's RECORD_REF as `ref`): equal digests mean there is nothing to copy either way."""
    owner = [entity.metadata.annotations.get(k) for k in (MANAGED_BY, GIT_SOURCE)]
    spec = spec_digest(type(entity), entity.spec.wire())
    return _digest([ref, spec, entity.metadata.labels, owner])


def adopt(
    records: RecordStore, kind: type[Entity], body: Mapping[str, Any], known: str | None = None
) -> str:
    """Make the record agree with its CR (blocking). Returns what it did: `created`,
    `updated`, `unchanged`, `pending` (the record's own spec is on its way to the CR) or
    `deleting`; or `known` without reading the record, when the CR is what the sync made
    of the record version it last pushed (`known`: `agreement` of that version).
    Raises ValidationError / dyff's Invalid for a spec dyff refuses."""
    from dyff.errors import AlreadyExists

    wanted = entity_from_cr(kind, body)
    meta = body.get("metadata") or {}
    cr_ref = (meta.get("annotations") or {}).get(RECORD_REF)
    if known is not None and cr_ref is not None and known == agreement(wanted, cr_ref):
        # Every kopf event of a CR the sync made would read the record only to find it
        # unchanged: a record store round trip per event, the slowest part on Datastore.
        return "known"
    account, name = wanted.account, wanted.name
    record = records.find(kind, account, name)
    if record is None:
        try:
            records.create(wanted)
            return "created"
        except AlreadyExists:
            record = records.get(kind, account, name)
    if record.metadata.deletion_timestamp is not None:
        return "deleting"
    same_spec = record.spec.wire() == wanted.spec.wire()
    same_labels = record.metadata.labels == wanted.metadata.labels
    owner = {k: wanted.metadata.annotations.get(k) for k in (MANAGED_BY, GIT_SOURCE)}
    same_owner = owner == {k: record.metadata.annotations.get(k) for k in owner}
    if same_spec and same_labels and same_owner:
        return "unchanged"
    if spec_push_pending(record, cr_ref) and same_owner:
        return "pending"

    def take(r: Entity) -> None:
        if not spec_push_pending(r, cr_ref):
            r.spec = wanted.spec
            r.metadata.labels = dict(wanted.metadata.labels)
            r.metadata.annotations[CR_GENERATION] = wanted.metadata.annotations[CR_GENERATION]
        for key, value in owner.items():  # Git takes over (or lets go of) the entity
            if value is None:
                r.metadata.annotations.pop(key, None)
            else:
                r.metadata.annotations[key] = value

    records.mutate(kind, account, name, take)
    return "updated"


@dataclass
class CrState:
    """What the sync needs to know of one CR (digests, so thousands stay small)."""

    uid: str | None
    generation: int
    resource_version: str | None
    spec: str
    labels: dict[str, str]
    status: str
    record_ref: str | None
    deleting: bool
    phase: str | None = None

    @classmethod
    def of(cls, kind: type[Entity], body: Mapping[str, Any]) -> CrState:
        meta = body.get("metadata") or {}
        return cls(
            uid=meta.get("uid"),
            generation=int(meta.get("generation") or 1),
            resource_version=meta.get("resourceVersion"),
            spec=spec_digest(kind, plain(body.get("spec"))),
            labels=dict(meta.get("labels") or {}),
            status=status_digest(kind, plain(body.get("status"))),
            record_ref=(meta.get("annotations") or {}).get(RECORD_REF),
            deleting=bool(meta.get("deletionTimestamp")),
            phase=(body.get("status") or {}).get("phase"),
        )


def _newer(old: CrState, new: CrState) -> bool:
    """Whether `new` is at least as recent as `old` (etcd resource versions are numbers;
    where they are not, take the latest seen)."""
    if old.uid != new.uid:
        return True
    try:
        return int(new.resource_version or 0) >= int(old.resource_version or 0)
    except ValueError:
        return True


class KeyLocks:
    """One asyncio lock per object, kept while anyone holds or waits for it: at most one
    reconcile pass or push per object at a time in this process. Exact, not striped: a
    slow pass (or hundreds queued for the record store) never holds up the push of an
    object it happens to share a stripe with."""

    def __init__(self) -> None:
        self._locks: dict[Key, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def of(self, key: Key) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


# Runs passes until a record marked deleting is gone (the kopf adapter's `finalize`).
FinalizeRecord = Callable[[type[Entity], str, str], Awaitable[object]]
# Called when a record reaches one of its kind's settled phases (`dyff.lifecycle`: a
# Model or Dataset Ready or Failed): what waits for it can go on.
Settled = Callable[[type[Entity], str, str], None]
# An upload landed for (kind, account, name): its upload ticket became Used.
UploadLanded = Callable[[type[Entity], str, str], None]


class RecordSync:
    """Records -> CRs. `run` polls the feed until stopped; `push` syncs one record."""

    def __init__(
        self,
        records: RecordStore,
        api: KubeApi,
        *,
        locks: KeyLocks,
        finalize: FinalizeRecord,
        on_settled: Settled | None = None,
        on_upload: UploadLanded | None = None,
        interval: float = 0.25,
        concurrency: int = 16,
        resync_interval: float = 300.0,
        kinds: Iterable[type[Entity]] = RESOURCE_TYPES,
        finalizers: Iterable[str] = (),
    ) -> None:
        self.records = records
        # Applied with every spec (never on a CR being deleted: `_push_locked` skips
        # those). Every apply names them, or server-side apply would remove the ones an
        # earlier apply of ours set.
        self.finalizers = tuple(finalizers)
        self.api = api
        self.locks = locks
        self.finalize = finalize
        self.on_settled = on_settled
        self.on_upload = on_upload
        # Tickets already announced, (account, ticket) -> (uid, version): a full re-read
        # of the feed (each resync) does not announce them again. The first read only
        # learns them: at start kopf resumes every object anyway.
        self._landed: dict[tuple[str, str], tuple[str | None, int]] = {}
        self._tickets_read = False
        self.interval = interval
        self.resync_interval = resync_interval
        self.kinds = tuple(kinds)
        self.crs: dict[Key, CrState] = {}
        # (uid, version) of the record last pushed per key: an older one never follows.
        self.pushed: dict[Key, tuple[str | None, int]] = {}
        # `agreement` of the record version last pushed per key, for `adopt`.
        self.agreed: dict[Key, str] = {}
        self._namespaces: set[str] = set()
        self._retry: dict[Key, tuple[float, Entity]] = {}
        self._gate = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="dyff-sync")
        # One thread per kind's feed; each feed's polls are sequential.
        self._reader = ThreadPoolExecutor(len(self.kinds) + 1, thread_name_prefix="dyff-sync-feed")
        self._feeds: dict[str, ChangeFeed[Any]] = {}
        self._latest: dict[Key, Entity] = {}
        self._pushers: dict[Key, asyncio.Task[None]] = {}
        self.last_poll = time.monotonic()
        self.pushes = 0

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # ---- what the CRs look like

    def observe(
        self, kind: type[Entity], body: Mapping[str, Any], *, deleted: bool = False
    ) -> None:
        """A CR as the watch (or a write) shows it."""
        meta = body.get("metadata") or {}
        key = (kind.kind_name, meta.get("namespace", ""), meta.get("name", ""))
        if deleted:
            self.crs.pop(key, None)
            return
        new = CrState.of(kind, body)
        old = self.crs.get(key)
        if old is None or _newer(old, new):
            self.crs[key] = new

    async def list_crs(self) -> None:
        """Learn every CR of the served kinds (at start, and on each full resync)."""
        for kind in self.kinds:
            seen: dict[Key, CrState] = {}
            token: str | None = None
            while True:
                query: dict[str, Any] = {"limit": 500}
                if token:
                    query["continue"] = token
                page = await self._call(
                    lambda q=query, k=kind: self.api.get(f"/apis/{API_VERSION}/{k.plural}", **q)
                )
                for item in page.get("items", []):
                    meta = item.get("metadata") or {}
                    seen[(kind.kind_name, meta.get("namespace", ""), meta.get("name", ""))] = (
                        CrState.of(kind, item)
                    )
                token = (page.get("metadata") or {}).get("continue") or None
                if not token:
                    break
            for key in [k for k in self.crs if k[0] == kind.kind_name and k not in seen]:
                del self.crs[key]
            self.crs.update(seen)

    # ---- the loop

    async def run(self, stop: asyncio.Event) -> None:
        next_resync = 0.0
        while not stop.is_set():
            started = time.monotonic()
            try:
                if started >= next_resync:
                    # Level-based safety net: learn the CRs again and read the whole
                    # feed, so anything a failure or a missed event left behind is redone.
                    await self.list_crs()
                    self._feeds = {}
                    self.pushed.clear()
                    self.agreed.clear()
                    next_resync = started + self.resync_interval
                # Pushes run on while the next polls happen: a slow batch does not delay
                # the records that change meanwhile.
                await self.poll_once(wait=False)
                self.last_poll = time.monotonic()
            except Exception:
                log.exception("sync poll failed; trying again")
            elapsed = time.monotonic() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, self.interval - elapsed))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), timeout=10)

    async def poll_once(self, *, wait: bool = True) -> int:
        """Start pushing every record changed since the last poll (and wait for the pushes
        unless `wait` is false); returns how many."""
        for kind in self.kinds:
            if kind.kind_name not in self._feeds:
                self._feeds[kind.kind_name] = ChangeFeed(self.records, kind)
        # The kinds' feeds are read side by side: a poll waits for one round trip (to
        # the store), not one per kind.
        loop = asyncio.get_running_loop()
        polls = [
            loop.run_in_executor(self._reader, self._feeds[kind.kind_name].poll)
            for kind in self.kinds
        ]
        if self.on_upload is not None:
            tickets = self._feeds.setdefault(
                UploadTicket.kind_name, ChangeFeed(self.records, UploadTicket)
            )
            polls.append(loop.run_in_executor(self._reader, tickets.poll))
        batch: dict[Key, Entity] = {}
        polled = await asyncio.gather(*polls)
        for kind, entities in zip(self.kinds, polled[: len(self.kinds)], strict=True):
            for entity in entities:
                batch[(kind.kind_name, entity.account, entity.name)] = entity
        if self.on_upload is not None:
            self._announce_uploads(polled[len(self.kinds)])
        now = time.monotonic()
        for key, (due, entity) in list(self._retry.items()):
            if due <= now:
                del self._retry[key]
                batch.setdefault(key, entity)
        for key, entity in batch.items():
            self._enqueue(key, entity)
        if wait:
            await self.drain()
        return len(batch)

    def _announce_uploads(self, tickets: Iterable[UploadTicket]) -> None:
        """Each ticket newly Used (the shim received the bytes, or a client said its
        signed upload is done): its entity's pass runs now, not at its next timer."""
        assert self.on_upload is not None
        for ticket in tickets:
            key = (ticket.account, ticket.name)
            version = (ticket.metadata.uid, int(ticket.metadata.resource_version or 0))
            if ticket.status.phase != "Used" or self._landed.get(key) == version:
                continue
            self._landed[key] = version
            if self._tickets_read:
                kind = Model if ticket.spec.target_kind == "Model" else Dataset
                self.on_upload(kind, ticket.account, ticket.spec.target_name)
        self._tickets_read = True

    def _enqueue(self, key: Key, entity: Entity) -> None:
        """One pusher per object at a time, always with its newest version."""
        self._latest[key] = entity
        if key not in self._pushers:
            self._pushers[key] = asyncio.create_task(self._pusher(key))

    async def _pusher(self, key: Key) -> None:
        try:
            while True:
                entity = self._latest.pop(key, None)
                if entity is None:
                    del self._pushers[key]  # no await since the check: nothing slips by
                    return
                await self._push_gated(entity)
        except BaseException:
            self._pushers.pop(key, None)
            raise

    async def drain(self) -> None:
        """Wait until every started push is done."""
        while self._pushers:
            await asyncio.gather(*list(self._pushers.values()), return_exceptions=True)

    async def _push_gated(self, entity: Entity) -> None:
        if self._pushed_already(entity):
            return  # a pass pushed it (or a newer version) already: no lock, no slot
        try:
            await self.push(entity, gated=True)
        except Exception as exc:
            key = (entity.kind, entity.account, entity.name)
            log.warning("sync of %s %s/%s failed (%s); retrying", *key, exc)
            self._retry[key] = (time.monotonic() + 2.0, entity)

    def forget(self, key: Key) -> None:
        """The record is gone (or going): what was pushed of it no longer holds."""
        self.pushed.pop(key, None)
        self.agreed.pop(key, None)

    def _pushed_already(self, entity: Entity) -> bool:
        """This record version (or a newer one of the same record) reached its CR."""
        last = self.pushed.get((entity.kind, entity.account, entity.name))
        version = int(entity.metadata.resource_version or 0)
        return last is not None and last[0] == entity.metadata.uid and last[1] >= version

    def health(self, max_age: float = 120.0) -> dict[str, Any]:
        """For the liveness probe: the loop must have polled recently."""
        age = time.monotonic() - self.last_poll
        if age > max_age:
            raise RuntimeError(f"record sync has not polled for {age:.0f}s")
        return {"lastPollAgeSeconds": round(age, 1), "pushes": self.pushes, "crs": len(self.crs)}

    # ---- one record

    async def push(self, entity: Entity, *, again: bool = False, gated: bool = False) -> None:
        """Bring the record's CR in line with it (no-op where it already is). `again`:
        even if this record version was pushed (its CR changed since). `gated`: count
        against the sync's concurrency, taken only once the object's lock is held, so
        pushes waiting behind a pass leave the slots to other objects."""
        kind = type(entity)
        key: Key = (kind.kind_name, entity.account, entity.name)
        version = int(entity.metadata.resource_version or 0)
        finalize = False
        async with self.locks.of(key):
            if self._pushed_already(entity) and not again:
                return  # a newer version was pushed already
            async with self._gate if gated else contextlib.nullcontext():
                if entity.metadata.deletion_timestamp is not None:
                    # The CR goes first (its finalizer holds it while kopf finalizes), so
                    # no handler recreates the record; then the record is finalized here
                    # too, in case the CR had no finalizer yet (or never existed).
                    await self._call(self.api.delete, custom_object_path(*key))
                    self.forget(key)
                    finalize = True
                else:
                    await self._push_locked(kind, key, entity)
                    self.pushed[key] = (entity.metadata.uid, version)
                    self.agreed[key] = agreement(entity, record_ref(entity))
        if finalize:
            await self.finalize(kind, entity.account, entity.name)

    async def _push_locked(self, kind: type[Entity], key: Key, entity: Entity) -> None:
        cr = self.crs.get(key)
        if cr is None and CR_GENERATION in entity.metadata.annotations:
            # The spec came from a CR we have not seen: look before writing anything.
            found = await self._call(self.api.find, custom_object_path(*key))
            if found is not None:
                self.observe(kind, found)
                cr = self.crs.get(key)
        if cr is not None and cr.deleting:
            return  # kopf finalizes it; nothing to mirror into a CR on its way out
        spec = spec_digest(kind, entity.spec.wire())
        if cr is None or spec_push_pending(entity, cr.record_ref):
            cr = await self._apply(kind, key, entity)
        status = cr_status(entity, cr.generation, current=cr.spec == spec)
        if status_digest(kind, status) != cr.status:
            was = cr.phase
            await self._apply_status(kind, key, status)
            phase = entity.status.phase
            settled = lifecycle(entity.kind).is_settled(phase) and was != phase
            if settled and self.on_settled is not None:
                self.on_settled(kind, entity.account, entity.name)
        self.pushes += 1

    async def _apply(self, kind: type[Entity], key: Key, entity: Entity) -> CrState:
        await self._ensure_namespace(entity.account)
        try:
            applied = await self._call(
                self.api.apply, custom_object_path(*key), cr_manifest(entity, self.finalizers)
            )
        except ApiError as exc:
            if exc.status != 404:
                raise
            # The namespace went away since we made it (an admin deleted it): again.
            self._namespaces.discard(entity.account)
            await self._ensure_namespace(entity.account)
            applied = await self._call(
                self.api.apply, custom_object_path(*key), cr_manifest(entity, self.finalizers)
            )
        self.observe(kind, applied)
        return self.crs[key]

    async def refuse(self, kind: type[Entity], body: Mapping[str, Any], message: str) -> None:
        """A CR dyff cannot take (its spec is refused): say so in its status, in the kind's
        failure phase at its generation, so kubectl and Argo CD show why (Degraded), not
        a CR waiting forever for a controller that will never act."""
        meta = body.get("metadata") or {}
        generation = int(meta.get("generation") or 0)
        status = kind.status_type()
        failed = lifecycle(kind.kind_name).failed
        status.phase, status.message, status.observed_generation = failed, message, generation
        status.set_condition("Ready", "False", "InvalidSpec", message, generation)
        key: Key = (kind.kind_name, meta["namespace"], meta["name"])
        await self._apply_status(kind, key, status.wire())

    async def _apply_status(self, kind: type[Entity], key: Key, status: dict[str, Any]) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": kind.kind_name,
            "metadata": {"name": key[2], "namespace": key[1]},
            "status": status,
        }
        try:
            applied = await self._call(self.api.apply, custom_object_path(*key) + "/status", body)
        except ApiError as exc:
            if exc.status == 404:
                self.crs.pop(key, None)  # gone meanwhile; the next change recreates it
                return
            raise
        self.observe(kind, applied)

    async def _ensure_namespace(self, account: str) -> None:
        """Accounts are namespaces, created on an account's first entity."""
        if account in self._namespaces:
            return
        if await self._call(self.api.find, f"/api/v1/namespaces/{account}") is None:
            body = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": account, "labels": {"app.kubernetes.io/managed-by": "dyff"}},
            }
            try:
                await self._call(self.api.create, "/api/v1/namespaces", body)
            except ApiError as exc:
                if exc.status != 409:
                    raise
        self._namespaces.add(account)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reader.shutdown(wait=True, cancel_futures=True)
