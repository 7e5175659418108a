"""Perturbations in the plan: each perturbed shard cached under its own key (shard,
kind, severity, seed where it matters), the clean keys unchanged by adding one, and the
progress counted by criterion (dyff.evaluation.Plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dyff.evaluation import CLEAN, Variant, inputs_for, plan_inputs
from dyff.schema import Evaluation, Progress, Shard
from dyff.stores.file import FileBlobStore
from tests import factories

SHARDS = [Shard(sha256=f"{i:064x}", rows=10, first_row=10 * i) for i in range(3)]


def ready_pair() -> tuple[Any, Any]:
    model = factories.model("m1")
    model.status.phase, model.status.digest, model.status.labels = "Ready", "a" * 64, ["x", "y"]
    dataset = factories.dataset("d1")
    dataset.status.phase, dataset.status.labels = "Ready", ["x", "y"]
    return model, dataset


def evaluation(perturbations: list[dict[str, Any]] | None) -> Evaluation:
    doc = factories.evaluation().wire()
    if perturbations is not None:
        doc["spec"]["criteria"] = {"perturbations": perturbations}
    return Evaluation.model_validate(doc)


def inputs(perturbations: list[dict[str, Any]] | None) -> Any:
    model, dataset = ready_pair()
    return inputs_for(evaluation(perturbations), model, dataset, SHARDS)


def test_each_perturbation_severity_and_seed_has_its_own_key() -> None:
    plain = inputs(None)
    noisy = inputs([{"kind": "gaussian_noise", "severities": [1, 3]}])
    shard = SHARDS[0]
    assert noisy.prediction_key(shard) == plain.prediction_key(shard)  # clean: unchanged
    keys = {
        noisy.prediction_key(shard, Variant(kind, severity, seed))
        for kind in ("gaussian_noise", "rotate", "contrast")
        for severity in (1, 3)
        for seed in (0, 7)
    }
    # The random kinds are seeded; contrast ignores the seed: its two seeds share a key.
    assert len(keys) == 2 * (2 * 2) + 2  # noise, rotate: severity x seed; contrast: severity
    assert plain.prediction_key(shard) not in keys
    assert all(k.endswith(f"/{shard.sha256}.parquet") for k in keys)
    assert noisy.prediction_key(shard, CLEAN) == plain.prediction_key(shard)


def test_the_plan_infers_only_the_missing_perturbed_shards(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    spec = [
        {"kind": "gaussian_blur", "severities": [2]},
        {"kind": "jpeg", "severities": [5, 1]},
    ]
    ins = inputs(spec)
    for shard in SHARDS:  # the clean predictions exist: an evaluation ran before
        blobs.put(ins.prediction_key(shard), b"p")
    blobs.put(ins.prediction_key(SHARDS[1], Variant("jpeg", 1)), b"p")

    plan = plan_inputs(ins, blobs)
    assert plan.to_infer == [] and plan.reused == 3
    by_variant = {p.variant: p for p in plan.perturbed}
    assert list(by_variant) == [Variant("gaussian_blur", 2), Variant("jpeg", 1), Variant("jpeg", 5)]
    assert by_variant[Variant("gaussian_blur", 2)].to_infer == SHARDS
    assert by_variant[Variant("jpeg", 1)].to_infer == [SHARDS[0], SHARDS[2]]

    progress = plan.progress()
    assert (progress.shards_total, progress.shards_reused, progress.shards_done) == (12, 4, 4)
    assert progress.rows == 30
    assert progress.by_criterion is not None
    assert [(c.criterion, c.shards_total, c.shards_reused) for c in progress.by_criterion] == [
        ("predictions", 3, 3),
        ("perturbation gaussian_blur/2", 3, 0),
        ("perturbation jpeg/1", 3, 1),
        ("perturbation jpeg/5", 3, 0),
    ]
    done = set(plan.keys) | {by_variant[Variant("jpeg", 5)].keys[0]}
    assert plan.progress(done).shards_done == 4


def test_without_perturbations_progress_is_as_before(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path / "blobs")
    ins = inputs(None)
    blobs.put(ins.prediction_key(SHARDS[2]), b"p")
    plan = plan_inputs(ins, blobs)
    assert plan.perturbed == [] and plan.to_infer == SHARDS[:2]
    assert plan.progress() == Progress(shards_total=3, shards_done=1, shards_reused=1, rows=10)
