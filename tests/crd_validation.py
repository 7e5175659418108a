"""Validate an object the way the API server would: the CRD's OpenAPI schema, then its CEL rules.

No kube-apiserver can run here, so the schema is checked with jsonschema
(OpenAPI v3.0 keywords are draft-4 semantics) and the `x-kubernetes-validations`
rules are evaluated with cel-python, with `oldSelf` bound for updates.
"""

from __future__ import annotations

from typing import Any

import celpy
import jsonschema

_ENV = celpy.Environment()
_MISSING = object()


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


def validate(
    crd: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None
) -> list[str]:
    """Errors as `path: message`; empty when the API server would accept `obj`."""
    schema = crd_schema(crd)
    validator = jsonschema.Draft4Validator(schema)
    errors = [f"{_path(e.absolute_path)}: {e.message}" for e in validator.iter_errors(obj)]
    if not errors:
        _walk(schema, obj, old if old is not None else _MISSING, [], errors)
    return errors
