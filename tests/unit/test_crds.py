"""crds/ is generated from the schema, structural, explained, and enforces the same rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from dyff import crdgen
from dyff.errors import invalid_from_validation
from dyff.schema import RESOURCE_TYPES, entity_type, immutable_violations, parse_entity
from tests import crd_validation

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "config" / "samples"
CRDS = {t.kind_name: crdgen.crd(t) for t in RESOURCE_TYPES}
EXPECT = "dyff.io/expect-error"


@pytest.mark.parametrize("entity", RESOURCE_TYPES, ids=lambda t: t.kind_name)
def test_crds_match_what_make_crds_writes(entity: Any) -> None:
    path = ROOT / "crds" / f"dyff.io_{entity.plural}.yaml"
    assert path.exists(), f"{path} missing: run `make crds`"
    assert path.read_text() == crdgen.render(entity), f"{path} drifted: run `make crds`"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crd_schema_is_structural_and_every_field_is_described(kind: str) -> None:
    schema = crd_validation.crd_schema(CRDS[kind])
    for path, node in crd_validation.nodes(schema):
        banned = ["$ref", "anyOf", "oneOf", "allOf", "not", "const", "title"]
        if node.get("x-kubernetes-int-or-string"):
            # The one union a structural schema allows: no type, exactly this anyOf.
            assert "type" not in node, f"{kind}{path}: int-or-string with a type"
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], f"{kind}{path}"
            banned.remove("anyOf")
        else:
            assert "type" in node, f"{kind}{path}: no type (not structural)"
        for word in banned:
            assert word not in node, f"{kind}{path}: {word} is not allowed in a CRD schema"
        assert not ("properties" in node and "additionalProperties" in node), f"{kind}{path}"
        is_field = path and not path.endswith(("[]", "{}"))
        if is_field:
            assert node.get("description"), f"{kind}{path}: no description for kubectl explain"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_crd_names_columns_and_status(kind: str) -> None:
    spec = CRDS[kind]["spec"]
    assert spec["group"] == "dyff.io" and spec["scope"] == "Namespaced"
    assert "dyff" in spec["names"]["categories"] and spec["names"]["shortNames"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Ready", "Age"} <= columns
    if kind == "Evaluation":
        assert {"Model", "Dataset", "Accuracy"} <= columns
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
        "conditions"
    ]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {"type", "status", "reason"}


def test_crds_carry_the_cel_rules_the_issue_names() -> None:
    text = "\n".join(crdgen.render(t) for t in RESOURCE_TYPES)
    for message in [
        "source is immutable",
        "model is immutable",
        "dataset is immutable",
        "a uri source needs a sha256",
        "an image source must be pinned by digest",
    ]:
        assert message in text


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


VALID = sorted(SAMPLES.glob("*.yaml"))
INVALID = sorted((SAMPLES / "invalid").glob("*.yaml"))


def test_there_is_a_valid_sample_of_every_kind() -> None:
    kinds = {_docs(p)[0]["kind"] for p in VALID}
    assert kinds == set(CRDS)
    assert len(INVALID) >= 8


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_samples_pass_crd_and_schema(path: Path) -> None:
    for doc in _docs(path):
        assert crd_validation.validate(CRDS[doc["kind"]], doc) == []
        entity = parse_entity(doc)
        assert entity.name == doc["metadata"]["name"]


def _pydantic_errors(docs: list[dict[str, Any]]) -> list[str]:
    try:
        entities = [parse_entity(d) for d in docs]
    except ValidationError as exc:
        return [str(invalid_from_validation(exc))]
    if len(entities) == 2:
        old, new = entities
        return immutable_violations(entity_type(old.kind).spec_type, old.spec, new.spec)
    return []


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_samples_are_rejected_with_the_rules_message(path: Path) -> None:
    docs = _docs(path)
    expected = docs[0]["metadata"]["annotations"][EXPECT]
    crd = CRDS[docs[0]["kind"]]
    crd_errors = (
        crd_validation.validate(crd, docs[1], old=docs[0])
        if len(docs) == 2
        else crd_validation.validate(crd, docs[0])
    )
    assert crd_errors, f"{path.name}: the CRD accepted it"
    assert any(expected in e for e in crd_errors), crd_errors
    py_errors = _pydantic_errors(docs)
    assert py_errors, f"{path.name}: the pydantic schema accepted it"
    assert any(expected in e for e in py_errors), py_errors


def test_an_update_keeping_immutable_fields_passes_transition_rules() -> None:
    old = _docs(SAMPLES / "evaluation.yaml")[0]
    new = {**old, "spec": {**old["spec"], "run": {"batchSize": 8}}}
    assert crd_validation.validate(CRDS["Evaluation"], new, old=old) == []
