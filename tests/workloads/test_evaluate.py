"""The evaluate workload end to end: real tiny model, digits ingested by the real workloads,
SQLite records and a folder of blobs."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from dyff import layout, results
from dyff.errors import WorkloadFailed
from dyff.evaluation import (
    DEPENDENCY_NOT_FOUND,
    DEPENDENCY_NOT_READY,
    assigned,
    encode_predictions,
    inference_digest,
    label_space,
    plan,
    prediction_table,
)
from dyff.schema import (
    Dataset,
    DatasetSource,
    DatasetSpec,
    ImageSource,
    Model,
    ModelSource,
    ModelSpec,
    ObjectMeta,
    Shard,
    UploadSource,
)
from dyff.shard_lists import shards_of
from dyff.workloads import evaluate
from dyff.workloads.evaluate import MODEL_URL_ENV, run, run_evaluation
from tests.workloads.evaluation_fixtures import (
    HELDOUT,
    HELDOUT_ROWS,
    MODEL,
    OWNER,
    SHARD_ROWS,
    Platform,
    fresh_account,
    heldout_examples,
)


def bare_top1(model_dir: Path) -> np.ndarray:
    """Top-1 of a bare in-process forward pass over the held-out rows, in row order."""
    import torch
    from transformers import AutoModelForImageClassification

    from dyff.tinymodels import digits_splits, to_pixel_values

    model = AutoModelForImageClassification.from_pretrained(model_dir, use_safetensors=True)
    model.eval()
    with torch.inference_mode():
        logits = model(pixel_values=to_pixel_values(digits_splits()[1].images)).logits
    return np.asarray(logits.argmax(-1).numpy())


def predictions(platform: Platform, account: str, name: str) -> pl.DataFrame:
    paths = results.local_paths(platform.blobs, platform.manifest(account, name), Path("/unused"))
    return results.Results(paths).scan().sort("row_id").collect()


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_through_bentoml(platform: Platform, tiny_model_dir: Path) -> None:
    """The real path: the model's Bento under `bentoml serve`, every shard inferred."""
    account = fresh_account()
    platform.order(account, "e2e", batch_size=16, concurrency=3)
    outcome = run_evaluation(
        platform.records, platform.blobs, account, "e2e", scratch_dir=platform.root / "scratch"
    )
    assert outcome is not None
    assert outcome.inference_calls == 10 * -(-SHARD_ROWS // 16)  # per shard, ceil(45/16)

    ev = platform.evaluation(account, "e2e")
    st = ev.status
    ready = st.condition("Ready")
    assert st.phase == "Complete" and ready is not None
    assert (ready.status, ready.reason) == ("True", "Complete")
    assert st.progress is not None
    assert st.progress.wire() == {
        "shardsTotal": 10, "shardsDone": 10, "shardsReused": 0, "rows": HELDOUT_ROWS,
    }  # fmt: skip
    model = platform.records.get(Model, OWNER, MODEL)
    assert st.model_digest == model.status.digest
    prefix = layout.evaluation_prefix(account, "e2e", ev.metadata.uid or "")
    assert st.results_uri == platform.blobs.uri(prefix)

    # Held-out accuracy of the real model, through every layer.
    assert st.metrics is not None and st.metrics.accuracy is not None
    assert st.metrics.accuracy >= 0.9
    doc = platform.metrics_doc(account, "e2e")
    assert doc["labels"] == [str(i) for i in range(10)]
    assert doc["accuracy"] == st.metrics.accuracy
    assert doc["top5Accuracy"] == st.metrics.top5_accuracy
    assert doc["macro"]["f1"] == st.metrics.macro_f1 and doc["ece"] == st.metrics.ece
    # kubectl's Interval column: accuracy's bootstrap interval, as metrics.json has it.
    interval = doc["criteria"]["intervals"]["metrics"]["accuracy"]
    assert st.metrics.accuracy_interval == [round(interval["low"], 4), round(interval["high"], 4)]
    assert st.metrics.accuracy_interval[0] <= st.metrics.accuracy <= st.metrics.accuracy_interval[1]

    # The manifest lists the cache keys in shard order; the rows are the dataset's, once.
    ds = platform.records.get(Dataset, OWNER, HELDOUT)
    digest = inference_digest({"topK": 5}, np.arange(10))
    assert platform.manifest(account, "e2e") == [
        layout.prediction_key(account, model.status.digest or "", digest, s.sha256)
        for s in shards_of(platform.blobs, ds)
    ]
    frame = predictions(platform, account, "e2e")
    assert frame["row_id"].to_list() == list(range(HELDOUT_ROWS))
    assert frame["label"].to_list() == [t for _, t in heldout_examples()]
    # Served predictions are the bare forward pass's.
    np.testing.assert_array_equal(frame["predicted"].to_numpy(), bare_top1(tiny_model_dir))
    assert frame["correct"].to_list() == (frame["predicted"] == frame["label"]).to_list()
    assert frame["topk_labels"].list.len().to_list() == [5] * HELDOUT_ROWS
    assert (frame["topk_labels"].list.first() == frame["predicted"]).all()
    assert (frame["topk_scores"].list.first() == frame["score"]).all()


def test_metrics_match_scikit_learn(platform: Platform, served_tiny: str) -> None:
    from sklearn import metrics as skm

    account = fresh_account()
    platform.order(account, "sk")
    run_evaluation(platform.records, platform.blobs, account, "sk", model_url=served_tiny)
    doc = platform.metrics_doc(account, "sk")
    frame = predictions(platform, account, "sk")
    y, p = frame["label"].to_numpy(), frame["predicted"].to_numpy()
    assert doc["rows"] == HELDOUT_ROWS
    assert doc["accuracy"] == pytest.approx(skm.accuracy_score(y, p))
    prec, rec, f1, support = skm.precision_recall_fscore_support(y, p, zero_division=0)
    assert [c["precision"] for c in doc["perClass"]] == pytest.approx(prec)
    assert [c["recall"] for c in doc["perClass"]] == pytest.approx(rec)
    assert [c["f1"] for c in doc["perClass"]] == pytest.approx(f1)
    assert [c["support"] for c in doc["perClass"]] == support.tolist()
    assert doc["macro"]["f1"] == pytest.approx(skm.f1_score(y, p, average="macro"))
    assert doc["confusionMatrix"] == skm.confusion_matrix(y, p, labels=range(10)).tolist()
    topk = np.stack(frame["topk_labels"].to_list())
    assert doc["top5Accuracy"] == pytest.approx(np.mean((topk == y[:, None]).any(axis=1)))


def test_progress_written_after_every_shard(
    platform: Platform, served_tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[str, Any]] = []
    real = evaluate.set_status

    def spy(*args: Any, **kwargs: Any) -> None:
        writes.append((kwargs["phase"], kwargs.get("progress")))
        real(*args, **kwargs)

    monkeypatch.setattr(evaluate, "set_status", spy)
    account = fresh_account()
    platform.order(account, "progress", concurrency=2)
    run_evaluation(platform.records, platform.blobs, account, "progress", model_url=served_tiny)
    phases = [phase for phase, _ in writes]
    assert phases == ["Running"] * 11 + ["Complete"]
    done = [p.shards_done for _, p in writes]
    assert done == [*range(11), 10]
    assert [p.rows for _, p in writes] == [*(SHARD_ROWS * i for i in range(11)), HELDOUT_ROWS]


def test_dependency_not_ready_fails_the_evaluation(platform: Platform) -> None:
    account = fresh_account()
    pending = Dataset(
        metadata=ObjectMeta(name="pending", namespace=account),
        spec=DatasetSpec(source=DatasetSource(
            form="parquet", upload=UploadSource(sha256="0" * 64, size_bytes=1))),
    )  # fmt: skip
    platform.records.create(pending)
    # The dataset is this account's own; the model is OWNER's public one.
    platform.order(account, "early", dataset="pending", dataset_owner=account)
    with pytest.raises(WorkloadFailed) as err:
        run_evaluation(platform.records, platform.blobs, account, "early")
    assert err.value.reason == DEPENDENCY_NOT_READY
    st = platform.evaluation(account, "early").status
    ready = st.condition("Ready")
    assert st.phase == "Failed" and ready is not None
    assert (ready.status, ready.reason) == ("False", DEPENDENCY_NOT_READY)


def test_private_entities_of_other_accounts_are_not_found(platform: Platform) -> None:
    owner, other = fresh_account(), fresh_account()
    # A private copy of the dataset in `owner`'s account.
    platform.add_dataset("private", heldout_examples()[:20], 10, account=owner, public=False)
    platform.order(other, "snoop", dataset="private", dataset_owner=owner)
    with pytest.raises(WorkloadFailed) as err:
        run_evaluation(platform.records, platform.blobs, other, "snoop")
    assert err.value.reason == DEPENDENCY_NOT_FOUND
    assert platform.prediction_files(other) == []


def test_indexed_job_pods_last_one_completes(platform: Platform, served_tiny: str) -> None:
    account = fresh_account()
    platform.order(account, "indexed")
    ev = platform.evaluation(account, "indexed")
    metrics_key = layout.metrics_key(account, "indexed", ev.metadata.uid or "")
    ds = platform.records.get(Dataset, OWNER, HELDOUT)
    shards = shards_of(platform.blobs, ds)
    inferred: list[str] = []
    for index in (2, 0, 1):
        out = run_evaluation(platform.records, platform.blobs, account, "indexed",
                             shard_index=index, shard_count=3, model_url=served_tiny)  # fmt: skip
        assert out is not None
        assert out.inferred == [s.sha256 for i, s in enumerate(shards) if i % 3 == index]
        inferred += out.inferred
        st = platform.evaluation(account, "indexed").status
        assert st.progress is not None and st.progress.shards_done == len(inferred)
        if len(inferred) < len(shards):
            # Pods with others still working leave the results to them.
            assert out.metrics is None and st.phase == "Running"
            assert not platform.blobs.exists(metrics_key)
    # The last pod saw every shard's predictions and completed the evaluation.
    assert out.metrics is not None and platform.blobs.exists(metrics_key)
    st = platform.evaluation(account, "indexed").status
    assert st.phase == "Complete" and st.progress is not None
    assert st.progress.shards_reused == 0  # the pods inferred them, for this evaluation
    assert sorted(inferred) == sorted(s.sha256 for s in shards)
    # A plain run afterwards only recomputes the metrics.
    again = run_evaluation(platform.records, platform.blobs, account, "indexed")
    assert again is not None and again.inference_calls == 0 and again.metrics == out.metrics


def test_assigned_split_is_fixed() -> None:
    shards = [Shard(sha256=f"{i:064x}", rows=1, first_row=i) for i in range(7)]
    parts = [assigned(shards, shards, i, 3) for i in range(3)]
    assert [len(p) for p in parts] == [3, 2, 2]
    assert sorted(s.first_row for p in parts for s in p) == list(range(7))
    # What is cached already is skipped, but the split does not move.
    assert assigned(shards[1:], shards, 0, 3) == [shards[3], shards[6]]
    with pytest.raises(ValueError):
        assigned(shards, shards, 3, 3)


def test_image_form_model_uses_the_running_server(
    platform: Platform, served_tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image-form model's container is the server (DYFF_MODEL_URL); without one the
    evaluation fails with a reason."""
    account = fresh_account()
    digest = "ab" * 32
    image = Model(
        metadata=ObjectMeta(name="img", namespace=account),
        spec=ModelSpec(source=ModelSource(
            form="image", image=ImageSource(reference=f"reg.example/m@sha256:{digest}"))),
    )  # fmt: skip
    platform.records.create(image)

    def ready(m: Model) -> None:
        m.status.phase, m.status.digest = "Ready", digest
        m.status.set_condition("Ready", "True", "ImageAccepted", "", 1)

    platform.records.mutate(Model, account, "img", ready)
    platform.order(account, "img-eval", model="img", model_owner=account)
    monkeypatch.delenv(MODEL_URL_ENV, raising=False)
    with pytest.raises(WorkloadFailed) as err:
        run(platform.config(account, "img-eval"))
    assert err.value.reason == evaluate.MODEL_NOT_SERVED
    assert platform.evaluation(account, "img-eval").status.phase == "Failed"

    # Failed evaluations restart when ordered again.
    platform.order(account, "img-eval", model="img", model_owner=account)
    monkeypatch.setenv(MODEL_URL_ENV, served_tiny)
    run(platform.config(account, "img-eval"))
    st = platform.evaluation(account, "img-eval").status
    assert st.phase == "Complete" and st.model_digest == digest
    assert st.metrics is not None and (st.metrics.accuracy or 0) >= 0.9
    assert all(f"/predictions/{digest}/" in k for k in platform.prediction_files(account))


# ---------------------------------------------------------------- pure parts


def test_label_space_matches_by_name() -> None:
    names, mapping = label_space(["a", "b", "c"], ["c", "a", "z"])
    assert names == ["a", "b", "c", "z"] and mapping.tolist() == [2, 0, 3]
    same, ident = label_space(["a", "b"], ["a", "b"])
    assert same == ["a", "b"] and ident.tolist() == [0, 1]
    assert label_space(["a", "b"], None)[1].tolist() == [0, 1]
    # The spec and the runtime's version for the usual case; a remapping joins the key.
    from dyff.runtime import runtime_version

    usual = layout.config_digest({"topK": 5, "runtime": runtime_version()})
    assert inference_digest({"topK": 5}, ident) == usual
    assert inference_digest({"topK": 5}, mapping) != usual


def test_prediction_files_follow_the_contract() -> None:
    indices = np.array([[1, 0, 2], [2, 1, 0]], dtype=np.int32)
    scores = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]], dtype=np.float32)
    label_map = np.array([2, 0, 1], dtype=np.int32)  # model id -> label id
    table = prediction_table(np.array([10, 11]), np.array([0, 0]), indices, scores, label_map)
    data = encode_predictions(table)
    assert encode_predictions(table) == data  # deterministic bytes
    frame = pl.read_parquet(io.BytesIO(data))
    assert dict(frame.schema) == results.PREDICTION_SCHEMA
    assert frame.to_dicts() == [
        {"row_id": 10, "label": 0, "predicted": 0, "score": pytest.approx(0.7),
         "correct": True, "topk_labels": [0, 2, 1],
         "topk_scores": pytest.approx([0.7, 0.2, 0.1])},
        {"row_id": 11, "label": 0, "predicted": 1, "score": pytest.approx(0.5),
         "correct": False, "topk_labels": [1, 0, 2],
         "topk_scores": pytest.approx([0.5, 0.3, 0.2])},
    ]  # fmt: skip
    # Statistics let queries skip row groups by label or score.
    stats = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(1).statistics
    assert stats is not None and stats.has_min_max
    with pytest.raises(ValueError):
        prediction_table(np.array([1]), np.array([0, 0]), indices, scores, label_map)


def test_plan_without_running(platform: Platform, served_tiny: str) -> None:
    account = fresh_account()
    ev = platform.order(account, "planned")
    before = plan(platform.records, platform.blobs, ev)
    assert (before.shards_total, before.reused, len(before.to_infer)) == (10, 0, 10)
    assert before.rows_total == HELDOUT_ROWS and before.rows_done == 0
    run_evaluation(platform.records, platform.blobs, account, "planned", model_url=served_tiny)
    after = plan(platform.records, platform.blobs, ev)
    assert (after.reused, after.to_infer, after.rows_done) == (10, [], HELDOUT_ROWS)


@pytest.mark.slow
def test_criteria_reach_metrics_and_status_and_infer_nothing_more(platform: Platform) -> None:
    """Intervals, a slice by a derived attribute and two gates (one failing on its lower
    bound): metrics.json gets the versioned criteria section, status the GatesPassed
    condition naming the failing gate; a second order with other criteria reuses every
    prediction (criteria are not part of the reuse key)."""
    account = fresh_account()
    gates = [
        {"metric": "accuracy", "op": ">=", "value": 0.5},
        {"name": "perfect", "metric": "accuracy", "op": ">=", "value": 1.0, "using": "lower_bound"},
    ]
    criteria = {"intervals": {"resamples": 200}, "slices": [{"by": ["colour"]}], "gates": gates}
    platform.order(account, "gated", criteria=criteria)
    first = run_evaluation(platform.records, platform.blobs, account, "gated")
    assert first is not None
    doc = platform.metrics_doc(account, "gated")["criteria"]
    assert doc["version"] == 1 and doc["rows"] == HELDOUT_ROWS
    acc = doc["intervals"]["metrics"]["accuracy"]
    assert acc["low"] <= acc["value"] <= acc["high"] < 1.0
    (colour,) = doc["slices"]
    assert sum(v["support"] for v in colour["values"]) == HELDOUT_ROWS
    assert doc["gates"]["passed"] is False and doc["gates"]["failed"] == ["perfect"]
    ready = platform.evaluation(account, "gated").status.condition("GatesPassed")
    assert ready is not None and (ready.status, ready.reason) == ("False", "GatesFailed")
    assert "perfect" in ready.message

    platform.order(account, "gated-again", criteria={"gates": gates[:1]})
    again = run_evaluation(platform.records, platform.blobs, account, "gated-again")
    assert again is not None and again.inference_calls == 0
    assert "serve_start_s" not in again.timings, "a model server was started"
    timings = platform.evaluation(account, "gated-again").status.timings
    assert timings is not None and timings.model_start_s == 0 and timings.inference_s == 0
    passed = platform.evaluation(account, "gated-again").status.condition("GatesPassed")
    assert passed is not None and passed.status == "True"
