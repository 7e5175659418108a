"""Generate the CustomResourceDefinitions in `crds/` from the schema (`make crds`).

pydantic's JSON Schema is turned into a structural OpenAPI v3 schema: refs
inlined, optional fields unwrapped, a description on every field, and each
class's `Rule`s emitted as CEL `x-kubernetes-validations`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from dyff.schema import (
    GROUP,
    MAX_NAME_CHARS,
    RESOURCE_TYPES,
    VERSION,
    Entity,
    Schema,
)

CATEGORY = "dyff"
_DROP = {"title"}
_FIRST = {"type": 0, "description": 1, "required": 2, "properties": 3}

ARGOCD_SYNC_OPTIONS = "argocd.argoproj.io/sync-options"


def _rules_by_title() -> dict[str, list[dict[str, str]]]:
    """CEL rules of every schema class, keyed by the class name pydantic uses as title."""
    out: dict[str, list[dict[str, str]]] = {}
    stack: list[type[Schema]] = [Schema]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if "rules" in cls.__dict__ and cls.rules:
            out[cls.__name__] = [{"rule": r.cel, "message": r.message} for r in cls.rules]
    return out


def _resolve(node: Any, defs: dict[str, Any], rules: dict[str, list[dict[str, str]]]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs, rules) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").split("/")[-1]
        target = _resolve(copy.deepcopy(defs[name]), defs, rules)
        # The field's own description wins over the class docstring.
        target.update({k: v for k, v in node.items() if k != "default"})
        if "default" in node and node["default"] not in (None, {}):
            target["default"] = node["default"]
        return target
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"non-structural union: {options}")
        inner = _resolve(options[0], defs, rules)
        inner.update({k: v for k, v in node.items() if k not in ("default", *_DROP)})
        if node.get("default") is not None:
            inner["default"] = node["default"]
        return inner
    title = node.get("title")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "properties":
            out[key] = {k: _resolve(v, defs, rules) for k, v in value.items()}
        else:
            out[key] = _resolve(value, defs, rules)
    _map_keys(out)
    if out.get("x-kubernetes-int-or-string"):
        # An integer or a string (a quantity): the one union a structural schema allows.
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        # Structural schemas forbid additionalProperties beside properties;
        # unknown fields are pruned by the API server instead.
        out.pop("additionalProperties", None)
    if out.get("type") == "object" and title in rules:
        out["x-kubernetes-validations"] = [*rules[title], *out.get("x-kubernetes-validations", [])]
    if "default" in out and out["default"] is None:
        del out["default"]
    # type and description first, for people reading crds/.
    return {k: out[k] for k in sorted(out, key=lambda k: _FIRST.get(k, len(_FIRST)))}


def _map_keys(out: dict[str, Any]) -> None:
    """A map's key constraints (pydantic's `propertyNames`, or `patternProperties` for a
    key pattern), which structural schemas cannot carry, as a CEL rule over the keys; the
    value schema becomes `additionalProperties`."""
    keys = dict(out.pop("propertyNames", None) or {})
    by_pattern = out.pop("patternProperties", None)
    if by_pattern:
        if len(by_pattern) != 1:
            raise ValueError(f"several key patterns: {sorted(by_pattern)}")
        ((pattern, value),) = by_pattern.items()
        out["additionalProperties"] = value
        keys["pattern"] = pattern
    checks = []
    if "minLength" in keys:
        checks.append(f"size(k) >= {keys['minLength']}")
    if "maxLength" in keys:
        checks.append(f"size(k) <= {keys['maxLength']}")
    if "pattern" in keys:
        if "'" in keys["pattern"]:
            raise ValueError(f"key pattern with a quote: {keys['pattern']!r}")
        checks.append(f"k.matches(r'{keys['pattern']}')")
    if checks:
        out.setdefault("x-kubernetes-validations", []).append(
            {"rule": f"self.all(k, {' && '.join(checks)})", "message": "invalid map key"}
        )


def openapi_schema(cls: type[Schema]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of a schema class, CEL rules included."""
    raw = cls.model_json_schema(by_alias=True, mode="validation")
    resolved: dict[str, Any] = _resolve(raw, raw.get("$defs", {}), _rules_by_title())
    return resolved


def crd(entity: type[Entity]) -> dict[str, Any]:
    kind = entity.kind_name
    spec = openapi_schema(entity.spec_type)
    status = openapi_schema(entity.status_type)
    lifecycle = entity.status_type.lifecycle
    if lifecycle is not None:
        # pydantic refuses a phase not of the kind (`Status._phase_of_the_kind`); so does this.
        status["properties"]["phase"]["enum"] = [p.value for p in lifecycle.phases]
    root: dict[str, Any] = {
        "type": "object",
        "description": (entity.__doc__ or kind).strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object."},
            "kind": {"type": "string", "description": "Kind of this object."},
            "metadata": {
                "type": "object",
                "description": "Standard object metadata.",
                # The only restrictions a CRD may put on metadata. Declaring both names as
                # strings, name bounded, keeps this schema as CEL's type of the root, so the
                # root rule's cost is estimated for 63 characters, not for a whole request.
                "properties": {
                    "name": {
                        "type": "string",
                        "description": "Name, a DNS label (see the root rule).",
                        "maxLength": MAX_NAME_CHARS,
                    },
                    "generateName": {
                        "type": "string",
                        "description": "Prefix of a generated name.",
                        "maxLength": 253,
                    },
                },
            },
            "spec": spec,
            "status": status,
        },
    }
    if entity.root_rules:
        # At the root, CEL sees the whole object with metadata.name (and nothing else of
        # metadata): the API server then refuses names that pydantic refuses.
        root["x-kubernetes-validations"] = [
            {"rule": r.cel, "message": r.message} for r in entity.root_rules
        ]
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            **({"description": c.description} if c.description else {}),
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in entity.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{entity.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "dyff"},
            # Deleting a CRD deletes every object of its kind, and with them (while the
            # controller runs) every account's stored data: Argo CD must never prune or
            # delete one, whatever happens to the Application or to crds/ in Git.
            "annotations": {ARGOCD_SYNC_OPTIONS: "Prune=false,Delete=false"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": entity.plural,
                "singular": kind.lower(),
                "shortNames": list(entity.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render(entity: type[Entity]) -> str:
    header = "# Generated by `make crds` from dyff/schema.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(entity), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("crds"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for entity in RESOURCE_TYPES:
        path = args.out / f"{GROUP}_{entity.plural}.yaml"
        path.write_text(render(entity))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
