"""A Kubernetes API server for the controller's tests: kmock's `KubernetesEmulator` (its
HTTP server, URL parsing, routing, discovery, object store `objects` with every version
of every object, merge and JSON patches, Kubernetes errors, request log: iterate the
cluster) with its handling of object requests (a plain JSON merge; each request matched
against all earlier ones) replaced by what a real API server does, each in one place:

- discovery: kmock's bundled built-ins, and dyff's resources from the CRDs in crds/;
- `_stamp`: uid, creationTimestamp, generation (+1 for changes outside metadata and
  status), resourceVersion (one counter; a write that changes nothing makes none);
- `_confine`: the status subresource; ssa.py: server-side apply and field managers
  (their rules: test_ssa_rules.py);
- `_write`: finalizers, and garbage collection through ownerReferences;
- `_watch` (a kmock reaction): watches resumed from a resourceVersion, ended at
  timeoutSeconds; `_matches`: namespaces and equality label selectors;
- `__call__`: namespaces (`/api/v1/namespaces[/NAME]`), which kmock's URL parser cannot
  route; `_write`: objects go only into namespaces that exist.

Run one on its own (for benchmarks): `python -m tests.controller.kmock_cluster PORT`.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime
import functools
import json
import random
import re
import string
import sys
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml

from tests.controller import ssa

CRDS = sorted((Path(__file__).resolve().parents[2] / "crds").glob("*_*.yaml"))
NAMESPACES = kmock.resource("v1/namespaces")
SERVER_MINOR = "33"
NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+))?/?")
APPLY = "application/apply-patch+yaml"
SERVER_FIELDS = ("uid", "creationTimestamp", "generation", "deletionTimestamp", "resourceVersion")
EVENT_LOG = 100_000

Doc = dict[str, Any]
Key = tuple[kmock.resource, str | None, str]  # (resource, namespace, name)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message)


@functools.cache
def _crds() -> list[Doc]:
    return [
        yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        for path in CRDS
    ]


def _matches(doc: Doc, namespace: str | None, selector: str) -> bool:
    """Whether the object is in `namespace` (None: any) and its labels match an
    equality selector (`a=1,b==2`)."""
    meta = doc.get("metadata", {})
    wanted = (part.replace("==", "=").partition("=") for part in selector.split(",") if part)
    labels = meta.get("labels") or {}
    return namespace in (None, meta.get("namespace")) and all(
        labels.get(k.strip()) == v.strip() for k, _, v in wanted
    )


def _manager(params: Any, headers: Any) -> str:
    """The field manager: `fieldManager`, else the User-Agent up to its first '/'."""
    return str(params.get("fieldManager") or headers.get("User-Agent", "").split("/")[0])


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    # False only for hack/bench/sync_lag.py, which posts CRs into a namespace it never makes.
    namespaces_must_exist: bool = True
    _version: int = attrs.field(default=0, init=False)
    _log: collections.deque[tuple[int, kmock.resource, Doc]] = attrs.field(
        factory=lambda: collections.deque(maxlen=EVENT_LOG), init=False
    )
    _watchers: dict[kmock.resource, list[asyncio.Queue[Doc]]] = attrs.field(
        factory=lambda: collections.defaultdict(list), init=False
    )
    _list_maps: dict[kmock.resource, ssa.ListMaps] = attrs.field(factory=dict, init=False)
    _status_subresources: set[kmock.resource] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        with warnings.catch_warnings():  # kmock reads its bundle with a deprecated call
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()
        for crd in _crds():
            spec, names = crd["spec"], crd["spec"]["names"]
            for version in spec["versions"]:
                res = kmock.resource(
                    group=spec["group"], version=version["name"], plural=names["plural"]
                )
                self.resources[res] = kmock.ResourceInfo(
                    kind=names["kind"],
                    singular=names["singular"],
                    namespaced=spec["scope"] == "Namespaced",
                    shortnames=names.get("shortNames", []),
                    categories=names.get("categories", []),
                    subresources=version.get("subresources", {}),
                    verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                )
                self._list_maps[res] = ssa.list_maps(version["schema"]["openAPIV3Schema"])
        self._status_subresources = {
            r for r in self.resources if "status" in self.resources[r].subresources
        }
        self[kmock.action.WATCH] << self._watch

    async def _serve_server_version(self, request: Any) -> Any:
        """What this emulator's semantics follow (native sidecars, per-index retries):
        a current Kubernetes, not kmock's default 1.26."""
        doc = dict(await super()._serve_server_version(request))
        doc.update(major="1", minor=SERVER_MINOR, gitVersion=f"v1.{SERVER_MINOR}.0+kmock")
        return doc

    # ---- for tests

    @property
    def api_url(self) -> str:
        """Base URL of the API server (kmock's own `url` and `get` are its HTTP client)."""
        return str(self.servers[0].url).rstrip("/")

    def read(self, resource: str, namespace: str | None, name: str) -> Any:
        """The object's current document (a copy), or None."""
        found = self._find((kmock.resource(resource), namespace, name))
        return None if found is None else copy.deepcopy(found)

    def items(self, resource: str) -> list[Doc]:
        return copy.deepcopy(self._list(kmock.resource(resource), None, "")["items"])

    async def set_status(self, resource: str, namespace: str, name: str, status: Any) -> None:
        """What a controller in the cluster (the Job controller, a kubelet) would write."""
        res = kmock.resource(resource)
        base = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
        path = f"{base}/namespaces/{namespace}/{res.plural}/{name}/status"
        patch = [{"op": "add", "path": "/status", "value": status}]
        headers = {"Content-Type": "application/json-patch+json"}
        async with self.patch(path, json=patch, headers=headers) as response:
            assert response.status == 200, await response.text()

    # ---- requests

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = NAMESPACE_PATH.fullmatch(raw.path)
        if match is None:
            return await super().__call__(raw)
        key: Key = (NAMESPACES, None, match.group(1) or "")
        try:
            if raw.method == "POST" and not key[2]:
                manager = _manager(raw.query, raw.headers)
                return aiohttp.web.json_response(
                    self._create(NAMESPACES, None, await raw.json(), manager), status=201
                )
            if raw.method == "GET":
                found = self._existing(key) if key[2] else self._list(NAMESPACES, None, "")
                return aiohttp.web.json_response(found)
            raise error(405, "MethodNotAllowed", f"{raw.method} {raw.path}")
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res, action = request.resource, request.action
        if res is None or not res.plural or action in (None, kmock.action.WATCH):
            return await super()._handle(request)  # kmock's routing: discovery, `_watch`
        key: Key = (res, request.namespace, request.name or "")
        manager, status = _manager(request.params, request.headers), 200
        if action == kmock.action.LIST:
            doc = self._list(res, request.namespace, request.params.get("labelSelector", ""))
        elif action == kmock.action.FETCH:
            doc = self._existing(key)
        elif action == kmock.action.CREATE:
            doc, status = self._create(res, request.namespace, request.data or {}, manager), 201
        elif action == kmock.action.UPDATE:
            status = 200 if self._find(key) else 201  # an apply that creates
            doc = self._patch(request, key, manager)
        else:
            doc = self._delete(key)
        return aiohttp.web.json_response(doc, status=status)

    # ---- objects

    def _find(self, key: Key) -> Doc | None:
        found = key in self.objects and not self.objects[key].deleted
        return self.objects[key].raw if found else None

    def _existing(self, key: Key) -> Doc:
        doc = self._find(key)
        if doc is None:
            raise error(404, "NotFound", f"{key[0].plural} {key[2]!r} not found")
        return doc

    def _has_status(self, res: kmock.resource) -> bool:
        return res in self._status_subresources

    def _maps(self, res: kmock.resource) -> ssa.ListMaps:
        return self._list_maps.get(res, ssa.METADATA_LIST_MAPS)

    def _create(self, res: kmock.resource, namespace: str | None, data: Doc, manager: str) -> Doc:
        doc = ssa.update({}, self._confine(res, "", {}, data), manager, maps=self._maps(res))
        meta = doc["metadata"]
        if namespace is not None:
            meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            suffix = random.choices(string.ascii_lowercase + string.digits, k=5)
            meta["name"] = meta["generateName"] + "".join(suffix)
        key = (res, meta.get("namespace"), meta["name"])
        if self._find(key) is not None:
            raise error(409, "AlreadyExists", f"{res.plural} {meta['name']!r} already exists")
        if res == NAMESPACES:
            doc["status"] = {"phase": "Active"}
        return self._write(key, doc, None)

    def _patch(self, request: kmock.Request, key: Key, manager: str) -> Doc:
        res, sub, maps = key[0], request.subresource or "", self._maps(key[0])
        if (request.headers.get("Content-Type") or "").split(";")[0] == APPLY:
            old = self._find(key) if not sub else self._existing(key)  # apply creates
            applied = self._confine(res, sub, {}, request.data or {})
            force = request.params.get("force") == "true"
            try:
                new = ssa.apply(
                    old or {}, applied, manager, force=force, maps=maps, subresource=sub
                )
            except ssa.Conflict as exc:
                raise error(409, "Conflict", f"Apply failed: {exc}") from None
            if key[1] is not None:
                new["metadata"]["namespace"] = key[1]
        else:
            old = self._existing(key)
            # Optimistic concurrency: a write naming a resourceVersion that is no longer
            # the object's is refused (https://kubernetes.io/docs/reference/using-api/api-concepts/#conflicts).
            data = request.data if isinstance(request.data, dict) else {}  # or a JSON Patch
            version = (data.get("metadata") or {}).get("resourceVersion")
            if version is not None and version != old["metadata"].get("resourceVersion"):
                raise error(409, "Conflict", "the object has been modified; read it again")
            patched = kmock.Object(ssa.without_managed_fields(old))
            try:
                patched.patch(request.data)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise error(422, "Invalid", str(exc)) from None
            new = self._confine(res, sub, old, patched.raw)
            new = ssa.update(old, new, manager, maps=maps, subresource=sub)
        return self._write(key, new, old)

    def _confine(self, res: kmock.resource, subresource: str, old: Doc, new: Doc) -> Doc:
        """What a write may change: through `/status`, status only; through the object
        itself, anything but status (where status is a subresource)."""
        if subresource == "status":
            new, old = old, new
        elif not self._has_status(res):
            return new
        kept = {k: v for k, v in new.items() if k != "status"}
        return kept | ({"status": old["status"]} if old.get("status") is not None else {})

    def _stamp(self, res: kmock.resource, new: Doc, old: Doc | None) -> Doc:
        """What only the server writes."""
        meta = new.setdefault("metadata", {})
        for field in SERVER_FIELDS:
            meta.pop(field, None)
        if old is None:
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now(), generation=1)
            return new
        meta.update({f: old["metadata"][f] for f in SERVER_FIELDS if f in old["metadata"]})
        outside = {"metadata", "status"} if self._has_status(res) else {"metadata"}
        if any(new.get(k) != old.get(k) for k in (new.keys() | old.keys()) - outside):
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        return new

    def _write(self, key: Key, new: Doc, old: Doc | None, *, deleting: bool = False) -> Doc:
        if old is None and key[1] and self.namespaces_must_exist:
            self._existing((NAMESPACES, None, key[1]))  # 404 if the namespace is missing
        new = self._stamp(key[0], new, old)
        if deleting:
            new["metadata"]["deletionTimestamp"] = now()
        if new == old:
            return new  # nothing changed: no new version, no event
        self._version += 1
        new["metadata"]["resourceVersion"] = str(self._version)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            kind = "DELETED"  # the last finalizer is gone: so is the object
            self.objects[key].delete()
        elif key in self.objects:  # kmock keeps every version, and earlier lives
            kind = "MODIFIED" if old else "ADDED"
            self.objects[key].history.append(new)
        else:
            kind, self.objects[key] = "ADDED", new
        event = {"type": kind, "object": new}  # stored documents are never changed in place
        self._log.append((self._version, key[0], event))
        for queue in self._watchers[key[0]]:
            queue.put_nowait(event)
        if kind == "DELETED":
            self._collect(new["metadata"]["uid"])
        return new

    def _delete(self, key: Key) -> Doc:
        old = self._existing(key)
        if old["metadata"].get("deletionTimestamp"):
            return old
        return self._write(key, {**old, "metadata": dict(old["metadata"])}, old, deleting=True)

    def _collect(self, uid: str) -> None:
        """Garbage collection: delete what named the deleted object as its owner."""
        for key, obj in list(self.objects.items()):
            owners = [] if obj.deleted else obj.raw["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners) and self._find(key) is not None:
                self._delete(key)

    # ---- lists and watches

    def _list(self, res: kmock.resource, namespace: str | None, selector: str) -> Doc:
        items = [
            o.raw
            for (r, _, _), o in self.objects.items()
            if r == res and not o.deleted and _matches(o.raw, namespace, selector)
        ]
        return {"kind": "List", "metadata": {"resourceVersion": str(self._version)}, "items": items}

    async def _watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        """A watch (kmock streams it): the events since its resourceVersion (or the
        objects, as ADDED), then every new one, until timeoutSeconds."""
        res, since = request.resource, request.params.get("resourceVersion") or ""
        assert res is not None
        queue: asyncio.Queue[Doc] = asyncio.Queue()
        if not since.isdigit() or since == "0":
            backlog = [{"type": "ADDED", "object": o} for o in self._list(res, None, "")["items"]]
        elif len(self._log) == EVENT_LOG and self._log[0][0] > int(since) + 1:
            raise error(410, "Expired", f"too old resource version: {since}")
        else:
            backlog = [event for rv, r, event in self._log if rv > int(since) and r == res]
        for event in backlog:
            queue.put_nowait(event)
        self._watchers[res].append(queue)
        selector, loop = request.params.get("labelSelector", ""), asyncio.get_running_loop()
        deadline = loop.time() + float(request.params.get("timeoutSeconds") or 3600)
        try:
            yield b""  # the headers, at once
            while True:
                event = await asyncio.wait_for(queue.get(), deadline - loop.time())
                if _matches(event["object"], request.namespace, selector):
                    yield event
        except TimeoutError:
            pass  # the watch ends, as the API server ends it
        finally:
            self._watchers[res].remove(queue)


@asynccontextmanager
async def serve(port: int | None = None, **options: Any) -> AsyncIterator[Cluster]:
    """A Cluster listening on 127.0.0.1 (a free port unless given)."""
    async with Cluster(**options) as cluster, kmock.Server(cluster, port=port):
        yield cluster


async def _main(port: int) -> None:
    async with serve(port) as cluster:
        print(json.dumps({"url": cluster.api_url}), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
