"""Every user-settable field is bounded, once, in the schema: pydantic and the CRD agree."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from api_shim.routes.models_datasets import ModelCreate
from dyff import crdgen
from dyff.schema import (
    MAX_SIZE_BYTES,
    RESOURCE_TYPES,
    DatasetSpec,
    EvaluationSpec,
    ModelSpec,
    ObjectMeta,
)
from tests import crd_validation

CRDS = {t.kind_name: crdgen.crd(t) for t in RESOURCE_TYPES}


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_spec_field_of_the_crd_is_bounded(kind: str) -> None:
    root = crd_validation.crd_schema(CRDS[kind])["properties"]
    every = [*crd_validation.nodes(root["spec"], ".spec")]
    every += crd_validation.nodes(root["metadata"], ".metadata")
    for path, node in every:
        where = f"{kind}{path}"
        if node.get("x-kubernetes-int-or-string"):
            assert {"maxLength", "pattern", "minimum", "maximum"} <= set(node), where
            continue
        match node["type"]:
            case "string":
                assert "maxLength" in node or "enum" in node, f"{where}: no maxLength"
            case "array":
                assert "maxItems" in node, f"{where}: no maxItems"
            case "integer":
                assert "minimum" in node and "maximum" in node, f"{where}: unbounded integer"
            case "object" if "additionalProperties" in node:
                assert "maxProperties" in node, f"{where}: no maxProperties"
                rules = " ".join(r["rule"] for r in node.get("x-kubernetes-validations", []))
                assert "size(k)" in rules, f"{where}: map keys unbounded"


def _source(size: int) -> dict[str, Any]:
    return {"form": "parquet", "upload": {"sha256": "a" * 64, "sizeBytes": size}}


@pytest.mark.parametrize("size", [MAX_SIZE_BYTES + 1, 2**63, 2**64, int("9" * 401)])
def test_upload_size_is_bounded(size: int) -> None:
    with pytest.raises(ValidationError):
        DatasetSpec.model_validate({"source": _source(size)})
    crd = crd_validation.crd_schema(CRDS["Dataset"])
    node = crd["properties"]["spec"]["properties"]["source"]["properties"]["upload"]
    assert node["properties"]["sizeBytes"]["maximum"] == MAX_SIZE_BYTES
    DatasetSpec.model_validate({"source": _source(MAX_SIZE_BYTES)})


SPEC = {"source": {"form": "bento", "upload": {"sha256": "a" * 64, "sizeBytes": 1}}}
# The HTTP API's request bodies bound the label count; records take what a CR may have.
OVERSIZED: list[tuple[type[Any], dict[str, Any]]] = [
    (ModelCreate, {"name": "a", "spec": SPEC, "labels": {f"k{i}": "v" for i in range(65)}}),
    (ObjectMeta, {"name": "a", "namespace": "b", "labels": {"k": "v" * 64}}),
    (ObjectMeta, {"name": "a", "namespace": "b", "labels": {"k" * 400: "v"}}),
    (ObjectMeta, {"name": "a", "namespace": "b", "labels": {"bad key!": "v"}}),
    (ObjectMeta, {"name": "a", "namespace": "b", "annotations": {"k": "v" * 300_000}}),
    (ObjectMeta, {"name": "a" * 64, "namespace": "b"}),
    (ModelSpec, {"source": {"form": "image", "image": {"reference": "r@sha256:" + "a" * 600}}}),
    (
        ModelSpec,
        {
            "source": {"form": "bento", "upload": {"sha256": "a" * 64, "sizeBytes": 1}},
            "resources": {"memory": "9" * 100},
        },
    ),
    (
        ModelSpec,
        {
            "source": {
                "form": "bento",
                "upload": {"sha256": "a" * 64, "sizeBytes": 1, "filename": "f" * 256},
            }
        },
    ),
    (DatasetSpec, {"source": {"form": "parquet", "uri": {"uri": "gs://" + "x" * 3000}}}),
    (
        EvaluationSpec,
        {"model": {"name": "m"}, "dataset": {"name": "d"}, "metrics": ["accuracy"] * 8},
    ),
    (EvaluationSpec, {"model": {"name": "m" * 64}, "dataset": {"name": "d"}}),
    (
        EvaluationSpec,
        {
            "model": {"name": "m"},
            "dataset": {"name": "d"},
            "labelMapping": {"map": {f"L{i}": "x" for i in range(10_001)}},
        },
    ),
]


@pytest.mark.parametrize(("cls", "doc"), OVERSIZED, ids=[str(i) for i in range(len(OVERSIZED))])
def test_oversized_values_are_refused(cls: type[Any], doc: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        cls.model_validate(doc)


def test_the_api_takes_labels_up_to_its_bound() -> None:
    """The other side of the bound above: 64 labels are fine (so 65 fails for the count)."""
    labels = {f"k{i}": "v" for i in range(64)}
    assert (
        len(ModelCreate.model_validate({"name": "a", "spec": SPEC, "labels": labels}).labels) == 64
    )


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("2", 2.0), ("500m", 0.5), ("1.5", 1.5), ("2k", 2000.0), ("1Ki", 1024.0),
     ("1e3", 1000.0), (".5", 0.5), ("1.5Gi", 1.5 * 2**30), ("0", 0.0), (3, 3.0)],
)  # fmt: skip
def test_quantities_read_as_kubernetes_reads_them(quantity: str | int, value: float) -> None:
    from dyff.schema import quantity_value

    assert quantity_value(quantity) == value


@pytest.mark.parametrize("bad", ["lots", "", "-1", "1.5.2", "2 ", "1KiB"])
def test_a_string_that_is_no_quantity_is_refused(bad: str) -> None:
    from dyff.schema import quantity_value

    with pytest.raises(ValueError, match="quantity"):
        quantity_value(bad)
