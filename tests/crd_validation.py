"""Validate an object the way the API server would: the CRD's OpenAPI schema, then its CEL rules.

No kube-apiserver can run here, so the schema is checked with jsonschema
(OpenAPI v3.0 keywords are draft-4 semantics) and the `x-kubernetes-validations`
rules are evaluated with cel-python, with `oldSelf` bound for updates. Where the
API server differs from those libraries, this module does what the API server does:

- `pattern` is RE2 (Go's regexp), as in CEL's `matches`: `$` is the end of the text,
  where Python's `re.search` (jsonschema's) also matches before a final newline;
- `x-kubernetes-list-type: set` and `map` refuse duplicate items (keys);
- a null of a field that is not nullable is pruned before validation (and defaulting);
- the API server's own metadata checks (a name that is a DNS subdomain of at most
  253, label and annotation syntax, 256 KiB of annotations) run first;
- root rules see `self` as CEL does: the whole object, with only metadata.name and
  metadata.generateName of its metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
import re2

_ENV = celpy.Environment()
_MISSING = object()
# k8s.io/apimachinery/pkg/util/validation IsDNS1123Subdomain.
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_QUALIFIED = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
_LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def _re2_pattern(
    validator: Any, pattern: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if isinstance(instance, str) and re2.search(pattern, instance) is None:
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: dict[str, Any]
) -> Iterator[jsonschema.ValidationError]:
    if not isinstance(instance, list) or list_type not in ("set", "map"):
        return
    if list_type == "set":
        keys = [json.dumps(item, sort_keys=True) for item in instance]
    else:
        names = schema.get("x-kubernetes-list-map-keys", [])
        keys = [json.dumps([i.get(k) for k in names]) for i in instance if isinstance(i, dict)]
    if len(set(keys)) != len(keys):
        yield jsonschema.ValidationError(f"Duplicate value in a list-type {list_type}")


_Validator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {"pattern": _re2_pattern, "x-kubernetes-list-type": _list_type},
)


def crd_schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, sub-schema) of an OpenAPI schema: properties, items, map values."""
    out = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        out += nodes(sub, f"{path}.{name}")
    if "items" in schema:
        out += nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += nodes(schema["additionalProperties"], f"{path}{{}}")
    return out


def _path(parts: Any) -> str:
    return ".".join(str(p) for p in parts)


def cel(expr: str, **bindings: Any) -> Any:
    program = _ENV.program(_ENV.compile(expr))
    return program.evaluate({k: celpy.json_to_cel(v) for k, v in bindings.items()})


def _walk(schema: dict[str, Any], value: Any, old: Any, path: list[str], errors: list[str]) -> None:
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is _MISSING:
            continue  # transition rules apply to updates only
        bindings = {"self": value, **({"oldSelf": old} if transition else {})}
        try:
            ok = bool(cel(rule["rule"], **bindings))
        except Exception as exc:  # a rule that cannot evaluate rejects, as in the API server
            ok = False
            rule = {**rule, "message": f"{rule.get('message')} ({exc})"}
        if not ok:
            errors.append(f"{_path(path)}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                sub_old = old.get(name, _MISSING) if isinstance(old, dict) else _MISSING
                _walk(sub, value[name], sub_old, [*path, name], errors)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _walk(schema["items"], item, _MISSING, [*path, str(i)], errors)


def _cel_view(obj: Any) -> Any:
    """The root as CEL sees it: of metadata, only name and generateName."""
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        return obj
    meta = {k: v for k, v in obj["metadata"].items() if k in ("name", "generateName")}
    return {**obj, "metadata": meta}


def _qualified_name(key: str) -> bool:
    # IsQualifiedName: an optional DNS-subdomain prefix of 253 and `/`, a name of 63.
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or re2.search(_DNS_SUBDOMAIN, prefix) is None):
        return False
    return len(name) <= 63 and re2.search(_QUALIFIED, name) is not None


def _prune_nulls(value: Any) -> Any:
    """Nulls of non-nullable fields (no dyff field is nullable) go before validation."""
    if isinstance(value, dict):
        return {k: _prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune_nulls(v) for v in value]
    return value


def _meta_errors(obj: dict[str, Any]) -> list[str]:
    """The API server's own checks of a custom resource's metadata (ValidateObjectMeta):
    a name that is a DNS subdomain, label keys and values, annotation keys and size."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return ["metadata.name: Required value"]
    errors = []
    if len(name) > 253 or re2.search(_DNS_SUBDOMAIN, name) is None:
        errors.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain")
    for key, value in (meta.get("labels") or {}).items():
        if not _qualified_name(key):
            errors.append(f"metadata.labels: Invalid value: {key!r}: a qualified name")
        if len(value) > 63 or re2.search(_LABEL_VALUE, value) is None:
            errors.append(f"metadata.labels: Invalid value: {value!r}: a label value")
    annotations = meta.get("annotations") or {}
    for key in annotations:
        if not _qualified_name(key):
            errors.append(f"metadata.annotations: Invalid value: {key!r}: a qualified name")
    if sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items()) > 256 * 1024:
        errors.append("metadata.annotations: Too long: must have at most 262144 bytes")
    return errors


def validate(
    crd: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None
) -> list[str]:
    """Errors as `path: message`; empty when the API server would accept `obj`."""
    errors = _meta_errors(obj)
    if errors:
        return errors
    obj, old = _prune_nulls(obj), _prune_nulls(old)
    schema = crd_schema(crd)
    validator = _Validator(schema)
    errors = [f"{_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
    if not errors:
        old_view = _cel_view(old) if old is not None else _MISSING
        _walk(schema, _cel_view(obj), old_view, [], errors)
    return errors
