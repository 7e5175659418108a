"""A Kubernetes API server for tests: kmock's emulator plus what kopf and dyff rely on.

kmock (`KubernetesEmulator`) gives the HTTP server, URL parsing, resource discovery and
Kubernetes-style errors; its object handling is a plain JSON merge, and it matches every
request against the full history of earlier requests (quadratic: a few thousand
requests take seconds each). `Cluster` keeps kmock's server and discovery and serves
objects itself, as a real API server does:

- `metadata.uid`, `resourceVersion` (one counter for everything), `generation` (bumped
  only when `spec` changes, so kopf does not re-handle its own writes forever) and
  `creationTimestamp`; `generateName`;
- status subresources: `PATCH .../status` changes only `status`, other writes never
  change it; a write that changes nothing is no new version and no watch event;
- merge patches, JSON patches (a failed `test` is 422, as kopf expects) and server-side
  apply (`application/apply-patch+yaml`): create-or-update, the applied labels and
  annotations merged, the applied top-level fields (spec, or status on the
  subresource) replacing what was there; `resourceVersion` preconditions;
- deletion with finalizers, and garbage collection of objects whose `ownerReferences`
  name a deleted object (Jobs go with their CR);
- lists with equality label selectors; watches that resume from a `resourceVersion`
  (replayed from an event log; 410 Gone when it is too old) and end at
  `timeoutSeconds`;
- namespaces (`/api/v1/namespaces[/NAME]`), which kmock's URL parser cannot route.

Run one on its own (for benchmarks): `python -m tests.controller.kmock_cluster PORT`.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import itertools
import json
import random
import re
import string
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import dicts, enums, references, rendering

from dyff.schema import GROUP, RESOURCE_TYPES, VERSION

NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+))?/?")
APPLY = "application/apply-patch"
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
# The built-in resources dyff and kopf use: kind, namespaced, subresources.
BUILTIN = {
    "v1/namespaces": ("Namespace", False, {"status"}),
    "v1/pods": ("Pod", True, {"status", "log"}),
    "v1/serviceaccounts": ("ServiceAccount", True, set()),
    "v1/events": ("Event", True, set()),
    "events.k8s.io/v1/events": ("Event", True, set()),
    "batch/v1/jobs": ("Job", True, {"status"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": (
        "CustomResourceDefinition",
        False,
        {"status"},
    ),
}
EVENT_LOG = 100_000

RKey = tuple[str, str, str]  # (group, version, plural)
OKey = tuple[RKey, str | None, str]  # (resource, namespace, name)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message)


def rkey(resource: str | references.resource) -> RKey:
    res = references.resource(resource) if isinstance(resource, str) else resource
    return (res.group or "", str(res.version), str(res.plural))


def parse_selector(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip().lstrip("=")
    return out


def matches(doc: dict[str, Any], labels: dict[str, str]) -> bool:
    have = doc.get("metadata", {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    _counter: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _store: dict[OKey, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _log: collections.deque[tuple[int, RKey, dict[str, Any]]] = attrs.field(
        factory=lambda: collections.deque(maxlen=EVENT_LOG), init=False
    )
    _watchers: dict[RKey, list[tuple[str | None, asyncio.Queue[Any]]]] = attrs.field(
        factory=lambda: collections.defaultdict(list), init=False
    )
    _namespaces: dict[str, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _status_resources: set[RKey] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for name, (kind_name, namespaced, subresources) in BUILTIN.items():
            self._declare(name, kind_name, namespaced, subresources)
        for kind in RESOURCE_TYPES:
            self._declare(
                f"{GROUP}/{VERSION}/{kind.plural}",
                kind.kind_name,
                True,
                {"status"},
                shortnames=set(kind.short_names),
                categories={"dyff"},
            )

    def _declare(
        self, name: str, kind: str, namespaced: bool, subresources: set[str], **extra: Any
    ) -> None:
        self.resources[name] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            subresources=subresources,
            verbs=VERBS,
            **extra,
        )
        if "status" in subresources:
            self._status_resources.add(rkey(name))

    # ---- for tests

    @property
    def api_url(self) -> str:
        """Base URL of the API server (kmock's own `url` and `get` are its HTTP client)."""
        return str(self.servers[0].url).rstrip("/")

    def read(self, resource: str, namespace: str | None, name: str) -> Any:
        """The object's current document (a copy), or None."""
        doc = self._store.get((rkey(resource), namespace, name))
        return None if doc is None else copy.deepcopy(doc)

    def items(self, resource: str) -> list[dict[str, Any]]:
        rk = rkey(resource)
        return [copy.deepcopy(d) for (r, _, _), d in list(self._store.items()) if r == rk]

    async def set_status(self, resource: str, namespace: str, name: str, status: Any) -> None:
        """What a controller in the cluster (the Job controller, a kubelet) would write."""
        async with self._lock:
            key = (rkey(resource), namespace, name)
            doc = copy.deepcopy(self._store[key])
            doc["status"] = status
            self._write(key, doc)

    # ---- namespaces (outside kmock's URL parsing)

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = NAMESPACE_PATH.fullmatch(raw.path)
        if match is None:
            return await super().__call__(raw)
        name = match.group(1)
        if raw.method == "GET" and name is None:
            items = list(self._namespaces.values())
            return aiohttp.web.json_response({"kind": "NamespaceList", "items": items})
        if raw.method == "GET" and name in self._namespaces:
            return aiohttp.web.json_response(self._namespaces[name])
        if raw.method == "POST" and name is None:
            doc = await raw.json()
            ns = doc["metadata"]["name"]
            if ns in self._namespaces:
                return await self._render_error(error(409, "AlreadyExists", f"namespace {ns}"))
            doc["metadata"].update(self._new_meta())
            doc["status"] = {"phase": "Active"}
            self._namespaces[ns] = doc
            return aiohttp.web.json_response(doc, status=201)
        return await self._render_error(error(404, "NotFound", f"namespace {name!r} not found"))

    # ---- objects

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or not res.plural or request.action is None:
            return await super()._handle(request)  # discovery, by kmock
        rk = rkey(res)
        if request.action == enums.action.WATCH:
            return await self._watch(request, rk)
        status = 200
        async with self._lock:
            if request.action == enums.action.LIST:
                payload = self._list(request, rk)
            elif request.action == enums.action.FETCH:
                payload = self._existing((rk, request.namespace, request.name or ""))
            elif request.action == enums.action.CREATE:
                payload, status = self._create(rk, request.namespace, request.data or {}), 201
            elif request.action == enums.action.UPDATE:
                payload = self._update(request, rk)
            else:
                payload = self._delete((rk, request.namespace, request.name or ""))
        return aiohttp.web.json_response(payload, status=status)

    def _new_meta(self) -> dict[str, Any]:
        return {
            "uid": str(uuid.uuid4()),
            "resourceVersion": str(next(self._counter)),
            "generation": 1,
            "creationTimestamp": now(),
        }

    def _existing(self, key: OKey) -> dict[str, Any]:
        doc = self._store.get(key)
        if doc is None:
            raise error(404, "NotFound", f"{key[0][2]} {key[2]!r} not found")
        return doc

    def _emit(self, rk: RKey, kind: str, doc: dict[str, Any]) -> None:
        # Stored documents are never changed in place (writes store new ones), so events
        # and lists may share them.
        event = {"type": kind, "object": doc}
        self._log.append((int(doc["metadata"]["resourceVersion"]), rk, event))
        namespace = doc["metadata"].get("namespace")
        for wanted, queue in self._watchers[rk]:
            if wanted is None or wanted == namespace:
                queue.put_nowait(event)

    def _create(self, rk: RKey, namespace: str | None, data: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(data)
        meta = doc.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = meta["generateName"] + suffix
        namespace = namespace or meta.get("namespace")
        if namespace is not None:
            meta["namespace"] = namespace
        key = (rk, namespace, meta["name"])
        if key in self._store:
            raise error(409, "AlreadyExists", f"{rk[2]} {meta['name']!r} already exists")
        for field in ("deletionTimestamp", "resourceVersion", "uid", "generation"):
            meta.pop(field, None)
        meta.update(self._new_meta())
        if rk in self._status_resources:
            doc.pop("status", None)  # set through the subresource only
        self._store[key] = doc
        self._emit(rk, "ADDED", doc)
        return doc

    def _update(self, request: rendering.Request, rk: RKey) -> dict[str, Any]:
        key = (rk, request.namespace, request.name or "")
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        applying = content_type.startswith(APPLY)
        data = request.data
        old = self._store.get(key)
        if old is None:
            if applying and request.subresource is None:
                meta = {**(data.get("metadata") or {}), "name": key[2]}
                return self._create(rk, key[1], {**data, "metadata": meta})
            raise error(404, "NotFound", f"{rk[2]} {key[2]!r} not found")
        if isinstance(data, dict):
            wanted_rv = (data.get("metadata") or {}).get("resourceVersion")
            if wanted_rv is not None and wanted_rv != old["metadata"]["resourceVersion"]:
                raise error(409, "Conflict", "the object has been modified; read it again")
        if applying:
            new = self._apply(old, data, request.subresource)
        elif isinstance(data, list):
            try:
                new = jsonpatch.apply_patch(copy.deepcopy(old), data)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise error(422, "Invalid", str(exc)) from None
        else:
            new = dict(dicts.merge_patch_dict(copy.deepcopy(old), data or {}))
        if request.subresource == "status":
            new = {**old, "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif rk in self._status_resources:
            new.pop("status", None)
            if "status" in old:
                new["status"] = old["status"]
        # What only the server sets.
        meta = new.setdefault("metadata", {})
        for field in (
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        if new == old:
            return old  # no new version, no event
        if new.get("spec") != old.get("spec"):
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        return self._write(key, new)

    @staticmethod
    def _apply(
        old: dict[str, Any], applied: dict[str, Any], subresource: str | None
    ) -> dict[str, Any]:
        new = copy.deepcopy(old)
        if subresource == "status":
            new["status"] = copy.deepcopy(applied.get("status") or {})
            return new
        meta = applied.get("metadata") or {}
        for field in ("labels", "annotations"):
            if field in meta:
                new["metadata"][field] = {**(old["metadata"].get(field) or {}), **meta[field]}
        for field, value in applied.items():
            if field not in ("apiVersion", "kind", "metadata", "status"):
                new[field] = copy.deepcopy(value)
        return new

    def _write(self, key: OKey, doc: dict[str, Any]) -> dict[str, Any]:
        meta = doc["metadata"]
        meta["resourceVersion"] = str(next(self._counter))
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            # The last finalizer is gone: the object goes, and what it owns after it.
            del self._store[key]
            self._emit(key[0], "DELETED", doc)
            self._collect(meta.get("uid"))
        else:
            self._store[key] = doc
            self._emit(key[0], "MODIFIED", doc)
        return doc

    def _delete(self, key: OKey) -> dict[str, Any]:
        doc = copy.deepcopy(self._existing(key))
        if doc["metadata"].get("deletionTimestamp"):
            return doc
        doc["metadata"]["deletionTimestamp"] = now()
        return self._write(key, doc)

    def _collect(self, uid: str | None) -> None:
        """Garbage collection: delete what named the deleted object as its owner."""
        for key, doc in list(self._store.items()):
            owners = doc["metadata"].get("ownerReferences") or []
            if uid and key in self._store and any(o.get("uid") == uid for o in owners):
                self._delete(key)

    def _list(self, request: rendering.Request, rk: RKey) -> dict[str, Any]:
        wanted = parse_selector(request.params.get("labelSelector", ""))
        items = [
            doc
            for (r, ns, _), doc in self._store.items()
            if r == rk and request.namespace in (None, ns) and matches(dict(doc), wanted)
        ]
        version = self._log[-1][0] if self._log else 0
        return {"kind": "List", "metadata": {"resourceVersion": str(version)}, "items": items}

    async def _watch(self, request: rendering.Request, rk: RKey) -> aiohttp.web.StreamResponse:
        since = request.params.get("resourceVersion") or ""
        wanted = parse_selector(request.params.get("labelSelector", ""))
        timeout = float(request.params.get("timeoutSeconds") or 3600)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        subscriber = (request.namespace, queue)
        backlog: list[dict[str, Any]]
        async with self._lock:
            if not since.isdigit():
                # No version: the current objects first, as synthetic ADDED events.
                backlog = [
                    {"type": "ADDED", "object": doc}
                    for (r, ns, _), doc in self._store.items()
                    if r == rk and request.namespace in (None, ns) and matches(dict(doc), wanted)
                ]
            elif self._log and self._log[0][0] > int(since) + 1 and len(self._log) == EVENT_LOG:
                raise error(410, "Expired", f"too old resource version: {since}")
            else:
                backlog = [
                    event
                    for rv, r, event in self._log
                    if rv > int(since)
                    and r == rk
                    and request.namespace in (None, event["object"]["metadata"].get("namespace"))
                    and matches(event["object"], wanted)
                ]
            self._watchers[rk].append(subscriber)
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            for event in backlog:
                await response.write(json.dumps(event).encode() + b"\n")
            while loop.time() < deadline:
                if raw.transport is None or raw.transport.is_closing():
                    break  # the client went away
                try:
                    event = await asyncio.wait_for(queue.get(), min(1.0, deadline - loop.time()))
                except TimeoutError:
                    continue
                if matches(event["object"], wanted):
                    await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionError, RuntimeError):
            pass  # the client went away mid-write
        finally:
            self._watchers[rk].remove(subscriber)
        return response


@asynccontextmanager
async def serve(port: int | None = None) -> AsyncIterator[Cluster]:
    """A Cluster listening on 127.0.0.1 (a free port unless given)."""
    async with Cluster() as cluster, kmock.Server(cluster, port=port):
        yield cluster


async def _main(port: int) -> None:
    async with serve(port) as cluster:
        print(json.dumps({"url": cluster.api_url}), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
