"""Server-side apply as the emulated API server (kmock_cluster.py) does it, and so as
dyff's record sync (controller/sync.py) relies on it. test_ssa_rules.py states each rule
with the Kubernetes documentation it comes from
(https://kubernetes.io/docs/reference/using-api/server-side-apply/).

- A field is a path of FieldsV1 keys: `f:<name>` for a field of an object, and
  `k:<key fields as JSON>` for an item of a list whose schema says
  `x-kubernetes-list-type: map` (`list_maps`, from a CRD's schema). Any other list is
  atomic: one field, replaced whole. Of metadata, only labels, annotations, finalizers
  and ownerReferences belong to managers; the rest is the server's.
- `metadata.managedFields` holds one entry per (manager, operation, subresource).
- `apply` (operation Apply) merges the applied configuration into the object (objects
  field by field, map lists item by item, anything else replaced); a different value
  for a field another manager owns is a `Conflict` unless forced, which takes the field
  over; what the manager applied last time but not this time is removed unless another
  manager owns it (or something in it). The manager then owns exactly what it applied.
- `update` (operation Update: create, merge or JSON patch) gives its manager the fields
  whose value it changed, taking them from whoever had them; fields it removed leave
  every entry.

Not modelled: `x-kubernetes-list-type: set` (atomic here), atomic maps and structs,
defaulting, the `time` of managedFields entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

Path = tuple[str, ...]
ListMaps = Mapping[tuple[str, ...], tuple[str, ...]]  # field names of a map list -> its keys
Manager = tuple[str, str, str]  # (manager, operation, subresource)
MISSING: Any = object()
OWNED_METADATA = {"labels", "annotations", "finalizers", "ownerReferences"}
# ObjectMeta's own map list (ownerReferences, keyed by uid).
METADATA_LIST_MAPS: ListMaps = {("metadata", "ownerReferences"): ("uid",)}


class Conflict(Exception):
    def __init__(self, conflicts: list[tuple[str, Path]]) -> None:
        super().__init__("; ".join(f"conflict with {m!r}: {'.'.join(p)}" for m, p in conflicts))


def list_maps(schema: Mapping[str, Any]) -> dict[tuple[str, ...], tuple[str, ...]]:
    """The map lists of an openAPIV3Schema (of a CRD version), and ObjectMeta's."""
    found = dict(METADATA_LIST_MAPS)

    def walk(node: Mapping[str, Any], names: tuple[str, ...]) -> None:
        if node.get("x-kubernetes-list-type") == "map":
            found[names] = tuple(node["x-kubernetes-list-map-keys"])
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, (*names, name))
        if isinstance(node.get("items"), Mapping):
            walk(node["items"], names)

    walk(schema, ())
    return found


def _names(path: Path) -> tuple[str, ...]:
    return tuple(key[2:] for key in path if key.startswith("f:"))


def _item_key(item: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    return "k:" + json.dumps({k: item.get(k) for k in keys}, separators=(",", ":"))


def _children(value: Any, path: Path, maps: ListMaps) -> Iterator[tuple[str, Any]]:
    """The owned fields of an object, or the items of a map list; nothing for a leaf."""
    if isinstance(value, dict):
        for name, child in value.items():
            if (path == () and name in ("apiVersion", "kind")) or (
                path == ("f:metadata",) and name not in OWNED_METADATA
            ):
                continue
            yield f"f:{name}", child
    elif isinstance(value, list) and _names(path) in maps:
        for item in value:
            yield _item_key(item, maps[_names(path)]), item


NODE: Any = object()  # `flatten`'s value for an object or a map-list item (not a leaf)


def flatten(obj: Any, maps: ListMaps, path: Path = ()) -> dict[Path, Any]:
    """Every owned field of `obj`, with its value: a leaf's (a scalar, an atomic list),
    or NODE for the objects and map-list items around the leaves."""
    found: dict[Path, Any] = {}
    for key, child in _children(obj, path, maps):
        inner = (*path, key)
        is_map_list = isinstance(child, list) and _names(inner) in maps
        found[inner] = NODE if isinstance(child, dict) or is_map_list else child
        found.update(flatten(child, maps, inner))
    return found


def remove(obj: Any, path: Path, maps: ListMaps) -> None:
    """Delete the field at `path` from `obj`, in place."""
    parent = obj
    for depth, key in enumerate(path[:-1]):
        if isinstance(parent, dict):
            parent = parent.get(key[2:])
        elif isinstance(parent, list):
            keys = maps[_names(path[:depth])]
            parent = next((item for item in parent if _item_key(item, keys) == key), None)
    if isinstance(parent, dict):
        parent.pop(path[-1][2:], None)
    elif isinstance(parent, list):
        keys = maps[_names(path[:-1])]
        parent[:] = [item for item in parent if _item_key(item, keys) != path[-1]]


def merge(live: Any, applied: Any, maps: ListMaps, path: Path = ()) -> Any:
    """`applied` over `live`: objects field by field, map lists item by item."""
    if isinstance(live, dict) and isinstance(applied, dict):
        merged = dict(live)
        for name, value in applied.items():
            merged[name] = merge(live.get(name, MISSING), value, maps, (*path, f"f:{name}"))
        return merged
    if isinstance(live, list) and isinstance(applied, list) and _names(path) in maps:
        keys = maps[_names(path)]
        items = list(live)
        at = {_item_key(item, keys): i for i, item in enumerate(items)}
        for item in applied:
            key = _item_key(item, keys)
            if key in at:
                items[at[key]] = merge(items[at[key]], item, maps, (*path, key))
            else:
                at[key] = len(items)
                items.append(_copy(item))
        return items
    return _copy(applied)


def without_managed_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """`obj` (shallow) without metadata.managedFields, which each write sets anew."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta} if "metadata" in obj else dict(obj)


def _copy(value: Any) -> Any:
    """A deep copy of JSON data (faster than copy.deepcopy)."""
    return json.loads(json.dumps(value))


# ---- managedFields (FieldsV1: a trie of keys; "." marks a node that is itself owned)


# FieldsV1 tries, one per set of paths, shared between objects (never changed in place):
# objects of a kind mostly have the same fields, and this keeps writes cheap.
_TRIES: dict[frozenset[Path], dict[str, Any]] = {}
_PATHS: dict[int, frozenset[Path]] = {}


def encode(paths: set[Path]) -> dict[str, Any]:
    key = frozenset(paths)
    if key not in _TRIES:
        trie: dict[str, Any] = {}
        for path in sorted(paths):
            node = trie
            for step in path:
                node = node.setdefault(step, {})
        for path in paths:
            node = trie
            for step in path:
                node = node[step]
            if node and "." not in node:
                node["."] = {}
        _TRIES[key], _PATHS[id(trie)] = trie, key
    return _TRIES[key]


def decode(trie: Mapping[str, Any], path: Path = ()) -> set[Path]:
    known = _PATHS.get(id(trie))
    if known is not None and _TRIES.get(known) is trie:
        return set(known)
    found: set[Path] = set()
    for key, sub in trie.items():
        if key == ".":
            found.add(path)
        elif not sub:
            found.add((*path, key))
        else:
            found |= decode(sub, (*path, key))
    return found


def managers(obj: Mapping[str, Any]) -> dict[Manager, set[Path]]:
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    return {
        (e["manager"], e["operation"], e.get("subresource", "")): decode(e.get("fieldsV1") or {})
        for e in entries
    }


def _with_managers(obj: dict[str, Any], owners: dict[Manager, set[Path]]) -> dict[str, Any]:
    entries = [
        {
            "manager": manager,
            "operation": operation,
            "apiVersion": obj.get("apiVersion", ""),
            "fieldsType": "FieldsV1",
            "fieldsV1": encode(owned),
            **({"subresource": subresource} if subresource else {}),
        }
        for (manager, operation, subresource), owned in owners.items()
        if owned
    ]
    meta = obj.setdefault("metadata", {})
    meta.pop("managedFields", None)
    if entries:
        meta["managedFields"] = entries
    return obj


# ---- the two operations


def apply(
    live: Mapping[str, Any],
    applied: Mapping[str, Any],
    manager: str,
    *,
    force: bool,
    maps: ListMaps,
    subresource: str = "",
) -> dict[str, Any]:
    """The object after `manager` applied `applied` (raises Conflict)."""
    owners, present = managers(live), flatten(live, maps)
    me: Manager = (manager, "Apply", subresource)
    mine = flatten(applied, maps)
    conflicts = [
        (other, path)
        for other, owned in owners.items()
        if other != me
        for path in sorted(owned & mine.keys())
        if mine[path] is not NODE and present.get(path, MISSING) != mine[path]
    ]
    if conflicts and not force:
        raise Conflict([(other[0], path) for other, path in conflicts])
    for other, path in conflicts:
        owners[other].discard(path)
    new = merge(_copy(without_managed_fields(live)), applied, maps)
    others = [path for key, owned in owners.items() if key != me for path in owned]
    for path in sorted(owners.get(me, set()) - mine.keys(), key=len):
        if not any(owned[: len(path)] == path for owned in others):
            remove(new, path, maps)
    owners[me] = set(mine)
    return _with_managers(new, owners)


def update(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    manager: str,
    *,
    maps: ListMaps,
    subresource: str = "",
) -> dict[str, Any]:
    """`new` (a create, merge or JSON patch of `old`) with its managedFields."""
    owners = managers(old)
    before, after = flatten(old, maps), flatten(new, maps)
    changed = {
        path
        for path, value in after.items()
        if path not in before or (value is not NODE and before[path] != value)
    }
    for owned in owners.values():
        owned -= changed | (before.keys() - after.keys())
    me: Manager = (manager, "Update", subresource)
    owners[me] = owners.get(me, set()) | changed
    return _with_managers({**new, "metadata": dict(new.get("metadata") or {})}, owners)
