"""One rule set, one behaviour: what the CRD accepts, pydantic accepts, and the reverse.

Every case is run through the pydantic model (`parse_entity`, as the controller adopts a CR
and the HTTP API reads a body) and through the generated CRD (OpenAPI schema and CEL rules,
`tests.crd_validation`, the way the API server checks it). Both must give the verdict the
case names. A case the API server accepts and pydantic refuses is a CR dyff never adopts
(`Progressing` forever in Argo CD); the reverse is a record dyff cannot write as a CR.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from dyff import crdgen
from dyff.lifecycle import MODEL
from dyff.schema import (
    ALL_METRICS,
    MAX_GPUS,
    MAX_MAPPED_LABELS,
    MAX_QUANTITY_INT,
    MAX_SIZE_BYTES,
    NAME_RULE,
    RESOURCE_TYPES,
    ObjectMeta,
    parse_entity,
)
from tests import crd_validation

CRDS = {t.kind_name: crdgen.crd(t) for t in RESOURCE_TYPES}
SHA = "a" * 64
MODEL_PHASE = next(iter(MODEL.phases)).value
DIGEST = "registry.example/m@sha256:" + "b" * 64

BASE: dict[str, dict[str, Any]] = {
    "Model": {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "m", "namespace": "acct"},
        "spec": {"source": {"form": "bento", "upload": {"sha256": SHA, "sizeBytes": 1}}},
    },
    "Dataset": {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "d", "namespace": "acct"},
        "spec": {"source": {"form": "parquet", "upload": {"sha256": SHA, "sizeBytes": 1}}},
    },
    "Evaluation": {
        "apiVersion": "dyff.io/v1alpha1",
        "kind": "Evaluation",
        "metadata": {"name": "e", "namespace": "acct"},
        "spec": {"model": {"name": "m"}, "dataset": {"name": "d"}},
    },
}

OK, NO = True, False


def doc(kind: str, **changes: Any) -> dict[str, Any]:
    """BASE[kind] with `changes` set: keys are dotted paths (`spec.run.batchSize`)."""
    out = copy.deepcopy(BASE[kind])
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def model(**changes: Any) -> dict[str, Any]:
    return doc("Model", **changes)


def dataset(**changes: Any) -> dict[str, Any]:
    return doc("Dataset", **changes)


def evaluation(**changes: Any) -> dict[str, Any]:
    return doc("Evaluation", **changes)


def image(reference: str) -> dict[str, Any]:
    return model(**{"spec.source": {"form": "image", "image": {"reference": reference}}})


def cpu(value: Any) -> dict[str, Any]:
    return model(**{"spec.resources": {"cpu": value}})


def memory(value: Any) -> dict[str, Any]:
    return model(**{"spec.resources": {"memory": value}})


def uri(uri: str, sha256: str = SHA) -> dict[str, Any]:
    return dataset(**{"spec.source": {"form": "parquet", "uri": {"uri": uri, "sha256": sha256}}})


def upload(**fields: Any) -> dict[str, Any]:
    return model(**{"spec.source.upload": {"sha256": SHA, "sizeBytes": 1, **fields}})


def label_map(n: int, key: str = "L") -> dict[str, Any]:
    return evaluation(**{"spec.labelMapping": {"map": {f"{key}{i}": "x" for i in range(n)}}})


def criteria(**fields: Any) -> dict[str, Any]:
    return evaluation(**{"spec.criteria": fields})


def gate(**fields: Any) -> dict[str, Any]:
    return {"metric": "accuracy", "op": ">=", "value": 0.5, **fields}


def condition(type_: str, reason: str = "Ok") -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason}


CASES = [
    # ---- metadata.name: pydantic's DNS label; the CRD's root CEL rule refuses the rest of
    # what the API server allows a CR (a DNS subdomain of 253, dots allowed).
    pytest.param(model(), OK, id="name-plain"),
    pytest.param(model(**{"metadata.name": "a" * 63}), OK, id="name-63-chars-at-max"),
    pytest.param(model(**{"metadata.name": "a" * 64}), NO, id="name-64-chars-over-max"),
    pytest.param(model(**{"metadata.name": "a.b"}), NO, id="name-with-dot-model"),
    pytest.param(dataset(**{"metadata.name": "d.v2"}), NO, id="name-with-dot-dataset"),
    pytest.param(evaluation(**{"metadata.name": "e.1"}), NO, id="name-with-dot-evaluation"),
    # a DNS subdomain of 253 characters: fine for the API server, not for dyff
    pytest.param(
        model(**{"metadata.name": ".".join(["a" * 63] * 4)[:253]}), NO, id="name-253-subdomain"
    ),
    pytest.param(model(**{"metadata.name": "Abc"}), NO, id="name-uppercase"),
    pytest.param(model(**{"metadata.name": "abc\n"}), NO, id="name-trailing-newline"),
    pytest.param(model(**{"metadata.name": "-a"}), NO, id="name-leading-dash"),
    pytest.param(model(**{"metadata.name": "a-"}), NO, id="name-trailing-dash"),
    pytest.param(model(**{"metadata.name": "a_b"}), NO, id="name-underscore"),
    pytest.param(model(**{"metadata.name": "0-9"}), OK, id="name-digits-and-dash"),
    # ---- labels and annotations: the API server's own syntax, on both sides
    pytest.param(model(**{"metadata.labels": {"team": "vision"}}), OK, id="label-plain"),
    pytest.param(
        model(**{"metadata.labels": {"example.com/" + "k" * 63: "v" * 63}}),
        OK,
        id="label-prefixed-name-63-value-63",
    ),
    pytest.param(model(**{"metadata.labels": {"k" * 64: "v"}}), NO, id="label-key-name-64"),
    pytest.param(
        dataset(**{"metadata.labels": {"a" * 254 + "/k": "v"}}), NO, id="label-key-prefix-254"
    ),
    pytest.param(model(**{"metadata.labels": {"k": "v" * 64}}), NO, id="label-value-64"),
    pytest.param(model(**{"metadata.labels": {"k": "v\n"}}), NO, id="label-value-newline"),
    pytest.param(model(**{"metadata.labels": {"k\n": "v"}}), NO, id="label-key-newline"),
    pytest.param(
        evaluation(**{"metadata.annotations": {"note": "x" * 1000}}), OK, id="annotation-plain"
    ),
    pytest.param(
        evaluation(**{"metadata.annotations": {"a": "x" * 200_000, "b": "x" * 70_000}}),
        NO,
        id="annotations-over-256KiB-in-all",
    ),
    # The API server puts no count on labels or annotations, and neither do records: the
    # HTTP API's request bodies do (README, Limits; tests/attack/test_limits.py).
    pytest.param(
        model(**{"metadata.labels": {f"k{i}": "v" for i in range(65)}}), OK, id="labels-65"
    ),
    pytest.param(
        model(**{"metadata.annotations": {f"k{i}": "v" for i in range(129)}}),
        OK,
        id="annotations-129",
    ),
    # ---- references: the same pattern and 63 characters on both sides
    pytest.param(evaluation(**{"spec.model.name": "m" * 63}), OK, id="ref-name-63-at-max"),
    pytest.param(evaluation(**{"spec.model.name": "m" * 64}), NO, id="ref-name-64-over-max"),
    pytest.param(evaluation(**{"spec.dataset.name": "d.v2"}), NO, id="ref-name-with-dot"),
    pytest.param(evaluation(**{"spec.dataset.name": "D"}), NO, id="ref-name-uppercase"),
    pytest.param(evaluation(**{"spec.model.name": "m\n"}), NO, id="ref-name-trailing-newline"),
    pytest.param(evaluation(**{"spec.model.name": ""}), NO, id="ref-name-empty"),
    pytest.param(evaluation(**{"spec.model.account": "other"}), OK, id="ref-account"),
    pytest.param(evaluation(**{"spec.model.account": "o" * 63}), OK, id="ref-account-63"),
    pytest.param(evaluation(**{"spec.model.account": "o" * 64}), NO, id="ref-account-64"),
    pytest.param(evaluation(**{"spec.dataset.account": "a.b"}), NO, id="ref-account-dot"),
    pytest.param(evaluation(**{"spec.model.account": "o\n"}), NO, id="ref-account-newline"),
    pytest.param(evaluation(**{"spec.model.name": 7}), NO, id="ref-name-integer"),
    # ---- patterns end at the end of the text: `$` never matches before a final "\n"
    pytest.param(upload(sha256=SHA + "\n"), NO, id="sha256-trailing-newline"),
    pytest.param(upload(sha256="A" * 64), NO, id="sha256-uppercase"),
    pytest.param(upload(sha256="a" * 63), NO, id="sha256-63-chars"),
    pytest.param(uri("gs://b/x", sha256=SHA + "\n"), NO, id="uri-sha256-trailing-newline"),
    pytest.param(uri("gs://b/x"), OK, id="uri-plain"),
    # URI_PATTERN has no `$`: the text after its `.+` is free, on both sides alike
    pytest.param(uri("gs://b/x\n"), OK, id="uri-trailing-newline-no-end-anchor"),
    pytest.param(uri("http://b/x"), NO, id="uri-other-scheme"),
    pytest.param(uri("gs://" + "x" * 2043), OK, id="uri-2048-at-max"),
    pytest.param(uri("gs://" + "x" * 2044), NO, id="uri-2049-over-max"),
    pytest.param(image(DIGEST), OK, id="image-pinned"),
    pytest.param(image("@sha256:" + "b" * 64), NO, id="image-without-repository"),
    pytest.param(image("m@sha256:" + "b" * 64), OK, id="image-bare-repository"),
    pytest.param(image("reg.example:5000/a/b:v1.2@sha256:" + "b" * 64), OK, id="image-port-tag"),
    pytest.param(image("reg.example/UPPER@sha256:" + "b" * 64), NO, id="image-uppercase-path"),
    pytest.param(image("reg.example/a//b@sha256:" + "b" * 64), NO, id="image-empty-path-part"),
    pytest.param(image("reg.example/a:@sha256:" + "b" * 64), NO, id="image-empty-tag"),
    # the CEL rule's `$` and the Python check of the same Rule agree on a final newline
    pytest.param(image(DIGEST + "\n"), NO, id="image-digest-trailing-newline"),
    pytest.param(image(DIGEST + "\nx"), NO, id="image-digest-then-more-lines"),
    pytest.param(image("registry.example/m:latest"), NO, id="image-unpinned"),
    pytest.param(image("r" * (512 - 72) + "@sha256:" + "b" * 64), OK, id="image-ref-512"),
    pytest.param(image("r" * (513 - 72) + "@sha256:" + "b" * 64), NO, id="image-ref-513"),
    pytest.param(dataset(**{"spec.split": "test"}), OK, id="split-plain"),
    pytest.param(dataset(**{"spec.split": "cfg/test"}), OK, id="split-config-slash-split"),
    pytest.param(dataset(**{"spec.split": "test\n"}), NO, id="split-trailing-newline"),
    pytest.param(dataset(**{"spec.split": "s" * 200}), OK, id="split-200-at-max"),
    pytest.param(dataset(**{"spec.split": "s" * 201}), NO, id="split-201-over-max"),
    # ---- quantities: Kubernetes' grammar, an integer or a string, never negative
    pytest.param(cpu(2), OK, id="cpu-integer-2"),
    pytest.param(cpu("2"), OK, id="cpu-string-2"),
    pytest.param(cpu("500m"), OK, id="cpu-500m"),
    pytest.param(cpu("1.5"), OK, id="cpu-decimal"),
    pytest.param(cpu("1e3"), OK, id="cpu-exponent"),
    pytest.param(cpu(0), OK, id="cpu-integer-0"),
    pytest.param(cpu("lots"), NO, id="cpu-lots"),
    pytest.param(cpu(""), NO, id="cpu-empty"),
    pytest.param(cpu("2\n"), NO, id="cpu-trailing-newline"),
    pytest.param(cpu(" 2"), NO, id="cpu-leading-space"),
    pytest.param(cpu(-1), NO, id="cpu-negative-integer"),
    pytest.param(cpu("-1"), NO, id="cpu-negative-string"),
    pytest.param(cpu(2.5), NO, id="cpu-float-number"),
    pytest.param(cpu(True), NO, id="cpu-boolean"),
    pytest.param(cpu(MAX_QUANTITY_INT), OK, id="cpu-integer-at-max"),
    pytest.param(cpu(MAX_QUANTITY_INT + 1), NO, id="cpu-integer-over-max"),
    pytest.param(cpu("9" * 32), OK, id="cpu-32-chars-at-max"),
    pytest.param(cpu("9" * 33), NO, id="cpu-33-chars-over-max"),
    pytest.param(memory("1.5Gi"), OK, id="memory-1.5Gi"),
    pytest.param(memory("4Gi"), OK, id="memory-4Gi"),
    pytest.param(memory(4 * 2**30), OK, id="memory-integer-bytes"),
    pytest.param(memory("4GB"), NO, id="memory-GB-not-a-suffix"),
    pytest.param(memory("4gi"), NO, id="memory-lowercase-suffix"),
    pytest.param(model(**{"spec.resources": {"gpu": MAX_GPUS}}), OK, id="gpu-at-max"),
    pytest.param(model(**{"spec.resources": {"gpu": MAX_GPUS + 1}}), NO, id="gpu-over-max"),
    pytest.param(model(**{"spec.resources": {"gpu": "1"}}), NO, id="gpu-string"),
    # ---- types as the API server checks them: no "5" for an integer, no "true" for a bool
    pytest.param(evaluation(**{"spec.inference.topK": 100}), OK, id="topk-at-max"),
    pytest.param(evaluation(**{"spec.inference.topK": 101}), NO, id="topk-over-max"),
    pytest.param(evaluation(**{"spec.inference.topK": "5"}), NO, id="topk-string"),
    pytest.param(evaluation(**{"spec.inference.topK": True}), NO, id="topk-boolean"),
    pytest.param(evaluation(**{"spec.inference.topK": 5.0}), NO, id="topk-float"),
    pytest.param(evaluation(**{"spec.run.batchSize": 4096}), OK, id="batch-size-at-max"),
    pytest.param(evaluation(**{"spec.run.batchSize": 0}), NO, id="batch-size-zero"),
    pytest.param(model(**{"spec.public": True}), OK, id="public-true"),
    pytest.param(model(**{"spec.public": "true"}), NO, id="public-string"),
    pytest.param(dataset(**{"spec.public": 1}), NO, id="public-integer"),
    pytest.param(upload(sizeBytes=MAX_SIZE_BYTES), OK, id="size-at-max"),
    pytest.param(upload(sizeBytes=MAX_SIZE_BYTES + 1), NO, id="size-over-max"),
    pytest.param(upload(sizeBytes="1"), NO, id="size-string"),
    pytest.param(upload(filename="f" * 255), OK, id="filename-255-at-max"),
    pytest.param(upload(filename="f" * 256), NO, id="filename-256-over-max"),
    # ---- lists at and over their max; metrics once each (list-type set)
    pytest.param(evaluation(**{"spec.metrics": list(ALL_METRICS)}), OK, id="metrics-all-at-max"),
    pytest.param(evaluation(**{"spec.metrics": []}), OK, id="metrics-empty"),
    pytest.param(
        evaluation(**{"spec.metrics": ["accuracy", "accuracy"]}), NO, id="metrics-duplicate"
    ),
    pytest.param(
        evaluation(**{"spec.metrics": [*ALL_METRICS, "accuracy"]}), NO, id="metrics-over-max"
    ),
    pytest.param(evaluation(**{"spec.metrics": ["accuracy\n"]}), NO, id="metric-with-newline"),
    pytest.param(evaluation(**{"spec.metrics": ["bleu"]}), NO, id="metric-unknown"),
    # cel-python takes seconds over 10,000 keys
    pytest.param(label_map(MAX_MAPPED_LABELS), OK, id="label-map-at-max", marks=pytest.mark.slow),
    pytest.param(label_map(MAX_MAPPED_LABELS + 1), NO, id="label-map-over-max"),
    pytest.param(
        evaluation(**{"spec.labelMapping": {"map": {"": "x"}}}), NO, id="label-map-empty-key"
    ),
    pytest.param(
        evaluation(**{"spec.labelMapping": {"map": {"k" * 256: "x"}}}), OK, id="label-key-256"
    ),
    pytest.param(
        evaluation(**{"spec.labelMapping": {"map": {"k" * 257: "x"}}}), NO, id="label-key-257"
    ),
    pytest.param(
        evaluation(**{"spec.labelMapping": {"map": {"k": "v" * 257}}}), NO, id="label-value-257"
    ),
    pytest.param(evaluation(**{"spec.labelMapping": {"map": {}}}), NO, id="label-map-empty"),
    pytest.param(evaluation(**{"spec.labelMapping": {"byIndex": True}}), OK, id="by-index"),
    # ---- null is "left out" (the API server prunes nulls of non-nullable fields)
    pytest.param(model(**{"spec.public": None}), OK, id="null-public-takes-default"),
    pytest.param(evaluation(**{"spec.run": None}), OK, id="null-run-takes-default"),
    pytest.param(evaluation(**{"spec.metrics": None}), OK, id="null-metrics-takes-default"),
    pytest.param(dataset(**{"spec.split": None}), OK, id="null-split"),
    pytest.param(evaluation(**{"spec.model": None}), NO, id="null-required-model"),
    pytest.param(
        evaluation(**{"spec.labelMapping": {"map": {"k": None}}}),
        NO,
        id="null-map-value-leaves-empty-map",
    ),
    pytest.param(evaluation(**{"spec.metrics": [None]}), NO, id="null-list-item"),
    # ---- lengths count characters (code points) on both sides, not bytes
    pytest.param(
        evaluation(**{"spec.labelMapping": {"map": {"k": "\U0001f600" * 256}}}),
        OK,
        id="label-value-256-emoji",
    ),
    pytest.param(
        evaluation(**{"spec.labelMapping": {"byIndex": False, "map": {"a": "b"}}}),
        OK,
        id="by-index-false-with-map",
    ),
    pytest.param(
        evaluation(**{"spec.labelMapping": {"byIndex": False}}), NO, id="by-index-false-alone"
    ),
    # ---- the cross-field Rules, as CEL and as Python
    pytest.param(
        model(**{"spec.source.uri": {"uri": "gs://b/x", "sha256": SHA}}), NO, id="two-sources"
    ),
    pytest.param(uri("gs://b/x", sha256=None), NO, id="uri-without-sha256"),
    pytest.param(model(**{"spec.source.form": "image"}), NO, id="form-image-with-an-upload-source"),
    # ---- status, as the controller writes it: a phase of the kind; conditions are a
    # list-type map keyed by type
    pytest.param(model(**{"status": {"phase": MODEL_PHASE}}), OK, id="status-phase-of-the-kind"),
    pytest.param(model(**{"status": {"phase": "Bogus"}}), NO, id="status-phase-unknown"),
    pytest.param(
        evaluation(**{"status": {"phase": MODEL_PHASE + "\n"}}), NO, id="status-phase-newline"
    ),
    pytest.param(
        model(**{"status": {"conditions": [condition("Ready"), condition("Ready")]}}),
        NO,
        id="status-duplicate-condition-type",
    ),
    pytest.param(
        model(**{"status": {"conditions": [condition("Ready"), condition("Stalled")]}}),
        OK,
        id="status-conditions-distinct",
    ),
    pytest.param(
        model(**{"status": {"conditions": [condition("Ready", reason="Ok\n")]}}),
        NO,
        id="status-reason-trailing-newline",
    ),
    # ---- criteria (issue 12): slices, gates, intervals, every list and string bounded
    pytest.param(criteria(), OK, id="criteria-empty"),
    pytest.param(
        criteria(
            intervals={"resamples": 2000, "level": 0.9, "seed": 7},
            slices=[{"by": ["lighting"]}, {"by": ["aspect", "colour"], "q": 0.1, "minSupport": 5}],
            gates=[
                {"metric": "accuracy", "op": ">=", "value": 0.9, "using": "lower_bound"},
                {"metric": "ece", "op": "<=", "value": 0.1, "slice": {"site": 3, "a": "x"}},
            ],
        ),
        OK,
        id="criteria-full",
    ),
    pytest.param(criteria(slices=[{"by": ["a", "b", "c", "d"]}]), NO, id="slice-by-4-over-max"),
    pytest.param(criteria(slices=[{"by": []}]), NO, id="slice-by-empty"),
    pytest.param(criteria(slices=[{"by": ["a", "a"]}]), NO, id="slice-by-duplicate"),
    pytest.param(criteria(slices=[{"by": ["a" * 64]}]), OK, id="slice-column-64-at-max"),
    pytest.param(criteria(slices=[{"by": ["a" * 65]}]), NO, id="slice-column-65-over-max"),
    pytest.param(criteria(slices=[{"by": ["bad name"]}]), NO, id="slice-column-space"),
    pytest.param(criteria(slices=[{"by": ["a\n"]}]), NO, id="slice-column-newline"),
    pytest.param(criteria(slices=[{"by": ["a"]}] * 17), NO, id="slices-17-over-max"),
    pytest.param(criteria(slices=[{"by": ["a"], "q": 0}]), NO, id="slice-q-zero"),
    pytest.param(criteria(slices=[{"by": ["a"], "minSupport": 0}]), NO, id="slice-support-0"),
    pytest.param(criteria(gates=[gate()] * 32), OK, id="gates-32-at-max"),
    pytest.param(criteria(gates=[gate()] * 33), NO, id="gates-33-over-max"),
    pytest.param(criteria(gates=[gate(value=1)]), OK, id="gate-value-integer-1"),
    pytest.param(criteria(gates=[gate(value=1.5)]), NO, id="gate-value-over-1"),
    pytest.param(criteria(gates=[gate(value="0.9")]), NO, id="gate-value-string"),
    pytest.param(criteria(gates=[gate(op="==")]), NO, id="gate-op-unknown"),
    pytest.param(criteria(gates=[gate(metric="bleu")]), NO, id="gate-metric-unknown"),
    pytest.param(criteria(gates=[gate(using="median")]), NO, id="gate-using-unknown"),
    pytest.param(criteria(gates=[gate(slice={"a": "v" * 256})]), OK, id="gate-slice-256"),
    pytest.param(criteria(gates=[gate(slice={"a": "v" * 257})]), NO, id="gate-slice-257"),
    pytest.param(criteria(gates=[gate(slice={"a": "v\n"})]), NO, id="gate-slice-newline"),
    pytest.param(criteria(gates=[gate(slice={"a": 2**53})]), OK, id="gate-slice-int-at-max"),
    pytest.param(criteria(gates=[gate(slice={"a": 2**53 + 1})]), NO, id="gate-slice-int-over"),
    pytest.param(criteria(gates=[gate(slice={"a": True})]), NO, id="gate-slice-boolean"),
    pytest.param(criteria(gates=[gate(slice={"a": 1.5})]), NO, id="gate-slice-float"),
    pytest.param(criteria(gates=[gate(slice={})]), NO, id="gate-slice-empty"),
    pytest.param(
        criteria(gates=[gate(slice={"a": "1", "b": "2", "c": "3", "d": "4"})]),
        NO,
        id="gate-slice-4-over-max",
    ),
    pytest.param(criteria(gates=[gate(slice={"bad key": "v"})]), NO, id="gate-slice-bad-key"),
    pytest.param(criteria(gates=[gate(name="n" * 63)]), OK, id="gate-name-63"),
    pytest.param(criteria(gates=[gate(name="n" * 64)]), NO, id="gate-name-64"),
    pytest.param(criteria(intervals={"resamples": 99}), NO, id="resamples-under-min"),
    pytest.param(criteria(intervals={"resamples": 10_001}), NO, id="resamples-over-max"),
    pytest.param(criteria(intervals={"level": 1.0}), NO, id="level-1"),
    pytest.param(criteria(intervals={"seed": -1}), NO, id="seed-negative"),
]


def _pydantic_accepts(obj: dict[str, Any]) -> tuple[bool, str]:
    try:
        parse_entity(obj)
    except (ValidationError, ValueError) as exc:
        return False, str(exc)
    return True, ""


@pytest.mark.parametrize(("obj", "accepted"), CASES)
def test_pydantic_and_the_crd_give_the_same_verdict(obj: dict[str, Any], accepted: bool) -> None:
    crd_errors = crd_validation.validate(CRDS[obj["kind"]], obj)
    py_ok, py_error = _pydantic_accepts(obj)
    assert (not crd_errors) == accepted, f"CRD: {crd_errors or 'accepted'}"
    assert py_ok == accepted, f"pydantic: {py_error or 'accepted'}"


NAMES = ["ok", "a.b", "a" * 64, "abc\n", "Abc", "a_b", "a" * 63, "x-1"]


@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_the_root_rule_names_itself_and_agrees_with_object_meta(name: str) -> None:
    try:
        ObjectMeta(name=name, namespace="acct")
        meta_ok = True
    except ValidationError:
        meta_ok = False
    assert NAME_RULE.check is not None
    assert NAME_RULE.check({"metadata": {"name": name}}) == meta_ok
    errors = crd_validation.validate(CRDS["Model"], model(**{"metadata.name": name}))
    if meta_ok:
        assert errors == []
    elif len(name) <= 63 and name.islower() and "_" not in name and "\n" not in name:
        # A name the API server itself allows is refused by the root rule, by its message.
        assert any("metadata.name must be a DNS label" in e for e in errors), errors


def test_every_crd_carries_the_root_name_rule() -> None:
    for kind, crd in CRDS.items():
        root = crd_validation.crd_schema(crd)
        rules = [r["rule"] for r in root.get("x-kubernetes-validations", [])]
        assert NAME_RULE.cel in rules, kind
        assert root["properties"]["metadata"]["properties"]["name"]["maxLength"] == 63


def test_the_table_covers_all_three_kinds() -> None:
    kinds = {p.values[0]["kind"] for p in CASES}
    assert kinds == set(CRDS)
    verdicts = {p.values[1] for p in CASES}
    assert verdicts == {OK, NO}
