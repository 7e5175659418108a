"""The label-matching rule (`dyff.labels.match_labels`), the labelMapping schema, and how a
mapping joins the reuse key."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from dyff import layout
from dyff.errors import WorkloadFailed
from dyff.evaluation import inputs_for, label_space, match_labels
from dyff.labels import LABEL_MISMATCH, describe
from dyff.schema import Evaluation, LabelMapping, Shard
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories

DIGITS = [str(i) for i in range(10)]
DEFAULTS = [f"LABEL_{i}" for i in range(10)]
ANIMALS = ["cat", "dog", "bird"]


def by_index() -> LabelMapping:
    return LabelMapping(by_index=True)


def mapped(**pairs: str) -> LabelMapping:
    return LabelMapping(map=pairs)


# (case, model labels, dataset labels, mapping, allowed, how, model id -> dataset id,
#  unmatched model labels, unmatched dataset labels)
TABLE: list[tuple[Any, ...]] = [
    ("same names", ANIMALS, ANIMALS, None, True, "name", (0, 1, 2), (), ()),
    ("same names, other order", ["dog", "bird", "cat"], ANIMALS, None, True, "name",
     (1, 2, 0), (), ()),
    ("transformers defaults", DEFAULTS, DIGITS, None, False, "refused", None, (), ()),
    ("defaults against other names", DEFAULTS[:3], ANIMALS, None, False, "refused", None,
     (), ()),
    ("no name in common", ["a", "b"], ANIMALS, None, False, "refused", None, (), ()),
    ("integer names against words", DIGITS[:3], ANIMALS, None, False, "refused", None, (), ()),
    ("model knows more", ["cat", "dog", "bird", "fish"], ANIMALS, None, True, "name",
     (0, 1, 2, None), ("fish",), ()),
    ("dataset has more", ["dog"], ANIMALS, None, True, "name", (1,), (), ("cat", "bird")),
    ("both have extras", ["dog", "cow"], ANIMALS, None, True, "name", (1, None), ("cow",),
     ("cat", "bird")),
    ("defaults by index", DEFAULTS, DIGITS, by_index(), True, "byIndex", tuple(range(10)),
     (), ()),
    ("by index, counts differ", DEFAULTS[:3], DIGITS, by_index(), False, "refused", None,
     (), ()),
    ("by index wins over names", ["bird", "cat", "dog"], ANIMALS, by_index(), True,
     "byIndex", (0, 1, 2), (), ()),
    ("explicit map", DEFAULTS[:3], ANIMALS,
     mapped(LABEL_0="dog", LABEL_1="cat", LABEL_2="bird"), True, "map", (1, 0, 2), (), ()),
    ("map part, rest by name", ["x", "dog", "bird"], ANIMALS, mapped(x="cat"), True, "map",
     (0, 1, 2), (), ()),
    ("map leaves some unmatched", DEFAULTS[:3], ANIMALS, mapped(LABEL_0="cat"), True, "map",
     (0, None, None), ("LABEL_1", "LABEL_2"), ("dog", "bird")),
    ("map names a label the model lacks", DEFAULTS[:3], ANIMALS, mapped(LABEL_7="cat"), False,
     "refused", None, (), ()),
    ("map to a label the dataset lacks", DEFAULTS[:3], ANIMALS, mapped(LABEL_0="cow"), False,
     "refused", None, (), ()),
    ("image form: dataset ids", None, ANIMALS, None, True, "image", None, (), ()),
    ("image form, by index", None, ANIMALS, by_index(), True, "image", None, (), ()),
    ("image form cannot map names", None, ANIMALS, mapped(a="cat"), False, "refused", None,
     (), ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "model", "dataset", "mapping", "allowed", "how", "ids", "um", "ud"),
    TABLE,
    ids=[c[0] for c in TABLE],
)
def test_match_table(
    case: str,
    model: list[str] | None,
    dataset: list[str],
    mapping: LabelMapping | None,
    allowed: bool,
    how: str,
    ids: tuple[int | None, ...] | None,
    um: tuple[str, ...],
    ud: tuple[str, ...],
) -> None:
    match = match_labels(model, dataset, mapping)
    assert (match.allowed, match.how) == (allowed, how), match.message
    if allowed:
        assert match.model_to_dataset == ids
        assert (match.unmatched_model, match.unmatched_dataset) == (um, ud)
        assert match.partial == bool(um or ud)
    else:
        # Refusals name both label lists and the field to fix.
        assert model is None or describe(model) in match.message
        assert describe(dataset) in match.message
        assert match.field in ("spec.model", "spec.labelMapping")
        assert match.field == ("spec.model" if mapping is None else "spec.labelMapping")


def test_refusals_say_what_is_wrong() -> None:
    defaults = match_labels(DEFAULTS, DIGITS)
    assert "LABEL_<n>" in defaults.message and "byIndex" in defaults.message
    unknown = match_labels(DEFAULTS[:3], ANIMALS, mapped(LABEL_7="cat"))
    assert "'LABEL_7'" in unknown.message and "model lacks" in unknown.message
    missing = match_labels(DEFAULTS[:3], ANIMALS, mapped(LABEL_0="cow"))
    assert "'cow'" in missing.message and "dataset lacks" in missing.message
    counts = match_labels(DEFAULTS[:3], DIGITS, by_index())
    assert "as many" in counts.message and "3 [" in counts.message and "10 [" in counts.message


def test_long_label_lists_are_cut_in_messages() -> None:
    many = [f"class-{i}" for i in range(1000)]
    text = describe(many)
    assert text.startswith("1000 [") and "'class-9'" in text and "'class-10'" not in text
    assert "(+990 more)" in text
    assert describe(["x" * 500]).count("x") < 50
    match = match_labels([f"LABEL_{i}" for i in range(1000)], many)
    assert not match.allowed and len(match.message) < 1000


def test_partial_message_lists_both_sides() -> None:
    match = match_labels(["dog", "cow"], ANIMALS)
    text = match.partial_message()
    assert "'cow'" in text and "'cat'" in text and "'bird'" in text


def test_label_space_puts_unmatched_model_labels_after_the_datasets() -> None:
    names, ids = label_space(ANIMALS, ["cow", "dog", "emu"])
    assert names == [*ANIMALS, "cow", "emu"] and ids.tolist() == [3, 1, 4]
    match = match_labels(DEFAULTS[:3], ANIMALS, by_index())
    names, ids = label_space(ANIMALS, DEFAULTS[:3], match)
    assert names == ANIMALS and ids.tolist() == [0, 1, 2]


# ------------------------------------------------------------------ schema


@pytest.mark.parametrize(
    "doc",
    [{}, {"byIndex": False}, {"byIndex": True, "map": {"a": "b"}}, {"map": {}},
     {"map": {"a": ""}}, {"map": {"": "b"}}, {"map": {"a": "b" * 300}},
     {"map": {"k" * 300: "b"}}, {"other": 1}],
)  # fmt: skip
def test_label_mapping_is_exactly_one_bounded_form(doc: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        LabelMapping.model_validate(doc)


def test_label_mapping_wire_forms() -> None:
    assert LabelMapping.model_validate({"byIndex": True}).wire() == {"byIndex": True}
    assert LabelMapping.model_validate({"map": {"LABEL_0": "cat"}}).wire() == {
        "map": {"LABEL_0": "cat"}
    }


# -------------------------------------------------------------- reuse key


def ready_pair(model_labels: list[str] | None, dataset_labels: list[str]) -> tuple[Any, Any]:
    model = factories.model("m1")
    model.status.phase, model.status.digest = "Ready", "a" * 64
    model.status.labels = model_labels
    dataset = factories.dataset("d1")
    dataset.status.phase, dataset.status.labels = "Ready", dataset_labels
    return model, dataset


SHARDS = [Shard(sha256="b" * 64, rows=10, first_row=0)]


def evaluation_with(mapping: dict[str, Any] | None) -> Evaluation:
    ev = factories.evaluation()
    doc = ev.wire()
    if mapping is not None:
        doc["spec"]["labelMapping"] = mapping
    return Evaluation.model_validate(doc)


def test_mapping_is_part_of_the_reuse_key() -> None:
    model, dataset = ready_pair(ANIMALS, ANIMALS)
    plain = inputs_for(evaluation_with(None), model, dataset, SHARDS)
    shard = SHARDS[0]
    # Without a mapping, an exact match is keyed by the inference settings alone.
    expected = inputs_for(factories.evaluation(), model, dataset, SHARDS)
    assert plain.prediction_key(shard) == expected.prediction_key(shard)
    by_index_ = inputs_for(evaluation_with({"byIndex": True}), model, dataset, SHARDS)
    by_map = inputs_for(evaluation_with({"map": {"cat": "cat"}}), model, dataset, SHARDS)
    swapped = inputs_for(
        evaluation_with({"map": {"cat": "dog", "dog": "cat"}}), model, dataset, SHARDS
    )
    keys = {i.prediction_key(shard) for i in (plain, by_index_, by_map, swapped)}
    assert len(keys) == 4
    assert swapped.label_map.tolist() == [1, 0, 2]
    assert all(k.startswith(layout.account_prefix("acme")) for k in keys)


def test_top_k_beyond_the_models_classes_is_one_key() -> None:
    """The server keeps at most the model's classes, so topK 3, 5 and 100 of a 3-class
    model are one computation and share predictions; topK 2 is another."""
    model, dataset = ready_pair(ANIMALS, ANIMALS)
    shard = SHARDS[0]

    def key(top_k: int) -> str:
        doc = factories.evaluation().wire()
        doc["spec"]["inference"] = {"topK": top_k}
        return inputs_for(Evaluation.model_validate(doc), model, dataset, SHARDS).prediction_key(
            shard
        )

    assert key(3) == key(5) == key(100)
    assert key(2) != key(3)


def test_defaults_by_index_evaluate_and_defaults_alone_are_refused() -> None:
    model, dataset = ready_pair(DEFAULTS, DIGITS)
    inputs = inputs_for(evaluation_with({"byIndex": True}), model, dataset, SHARDS)
    assert inputs.label_names == DIGITS and inputs.label_map.tolist() == list(range(10))
    with pytest.raises(WorkloadFailed) as err:
        inputs_for(evaluation_with(None), model, dataset, SHARDS)
    assert err.value.reason == LABEL_MISMATCH
    assert describe(DEFAULTS) in err.value.message and describe(DIGITS) in err.value.message


def test_partial_overlap_reports_extra_labels() -> None:
    model, dataset = ready_pair(["dog", "cow"], ANIMALS)
    inputs = inputs_for(evaluation_with(None), model, dataset, SHARDS)
    assert inputs.dataset_labels == ANIMALS and inputs.extra_labels == ["cow"]
    assert inputs.label_report() == {
        "extraLabels": ["cow"],
        "labelMatch": {"unmatchedModelLabels": ["cow"], "unmatchedDatasetLabels": ["cat", "bird"]},
    }


def _set_status(entity: Any, status: Any) -> None:
    entity.status = status


def test_workload_refuses_a_mismatch_past_the_shim(tmp_path: Path) -> None:
    """A CR written straight to the cluster: the evaluate workload fails it, LabelMismatch."""
    from dyff.workloads.evaluate import run_evaluation

    records = SqliteRecordStore(tmp_path / "records.db")
    blobs = FileBlobStore(tmp_path / "blobs")
    model, dataset = ready_pair(DEFAULTS, DIGITS)
    for entity in (model, dataset):
        status = entity.status.model_copy(deep=True)
        status.set_condition("Ready", "True", "Ready", "", 1)
        records.create(entity)
        records.mutate(type(entity), "acme", entity.name, partial(_set_status, status=status))
    records.create(factories.evaluation())
    with pytest.raises(WorkloadFailed) as err:
        run_evaluation(records, blobs, "acme", "e1")
    assert err.value.reason == LABEL_MISMATCH
    status = records.get(Evaluation, "acme", "e1").status
    ready = status.condition("Ready")
    assert status.phase == "Failed" and ready is not None and ready.reason == LABEL_MISMATCH
    assert "LABEL_0" in (status.message or "") and "'0'" in (status.message or "")


def test_metrics_from_prediction_files_cover_the_dataset_labels_only(tmp_path: Path) -> None:
    """Partial overlap through the real files: the model's 'cow' gets id 3 in the files,
    counts as wrong, and adds no class to the metrics."""
    import numpy as np

    from dyff.evaluation import encode_predictions, prediction_table
    from dyff.results import stream_metrics

    model, dataset = ready_pair(["dog", "cow", "cat"], ANIMALS)
    inputs = inputs_for(evaluation_with(None), model, dataset, SHARDS)
    assert inputs.label_map.tolist() == [1, 3, 0]
    truth = np.array([1, 1, 0, 2])  # dog, dog, cat, bird
    model_top = np.array([[0, 2], [1, 0], [2, 0], [1, 2]])  # dog, cow, cat, cow
    scores = np.full((4, 2), [0.9, 0.1], dtype=np.float32)
    table = prediction_table(np.arange(4), truth, model_top, scores, inputs.label_map)
    assert table.column("predicted").to_pylist() == [1, 3, 0, 3]
    path = tmp_path / "p.parquet"
    path.write_bytes(encode_predictions(table))
    doc = stream_metrics(
        [path], inputs.dataset_labels, ["accuracy", "recall", "confusion_matrix"],
        expected_rows=4, model_classes=inputs.model_classes,
    )  # fmt: skip
    assert doc["labels"] == ANIMALS and doc["accuracy"] == 0.5
    assert doc["predictedOutsideLabels"] == 2
    assert doc["confusionMatrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    recall = {c["label"]: (c["recall"], c["support"]) for c in doc["perClass"]}
    assert recall == {"cat": (1.0, 1), "dog": (0.5, 2), "bird": (0.0, 1)}
    assert inputs.top_k_kept == 3  # topK 5, clamped to the model's 3 classes
