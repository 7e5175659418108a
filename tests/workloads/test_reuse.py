"""What has been run is reused; only the missing parts are computed, and only within an
account. Inference calls are counted by the workload's client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dyff.evaluation import inference_digest
from dyff.schema import Dataset, Model
from dyff.shard_lists import shards_of
from dyff.workloads.evaluate import RunReport, run_evaluation
from tests.workloads.evaluation_fixtures import (
    HELDOUT,
    HELDOUT_PLUS,
    MODEL,
    OWNER,
    SHARD_ROWS,
    Platform,
    fresh_account,
)

BATCH = 32
CALLS_PER_SHARD = -(-SHARD_ROWS // BATCH)


def evaluate(platform: Platform, url: str, account: str, name: str, **order: object) -> RunReport:
    platform.order(account, name, **{"batch_size": BATCH, **order})  # type: ignore[arg-type]
    out = run_evaluation(platform.records, platform.blobs, account, name, model_url=url)
    assert out is not None
    assert platform.evaluation(account, name).status.phase == "Complete"
    return out


def shards(platform: Platform, name: str) -> list[str]:
    return [s.sha256 for s in shards_of(platform.blobs, platform.records.get(Dataset, OWNER, name))]


def test_repeated_evaluation_makes_no_inference_calls(platform: Platform, served_tiny: str) -> None:
    account = fresh_account()
    first = evaluate(platform, served_tiny, account, "first")
    assert first.inference_calls == 10 * CALLS_PER_SHARD
    assert first.inferred == shards(platform, HELDOUT)

    again = evaluate(platform, served_tiny, account, "again")
    assert again.inference_calls == 0 and again.inferred == []
    progress = platform.evaluation(account, "again").status.progress
    assert progress is not None and (progress.shards_reused, progress.shards_done) == (10, 10)
    assert platform.metrics_doc(account, "again")["accuracy"] == first.metrics["accuracy"]  # type: ignore[index]
    # The same cache files, listed by both evaluations.
    assert platform.manifest(account, "again") == platform.manifest(account, "first")
    assert len(platform.prediction_files(account)) == 10


def test_appended_rows_infer_exactly_the_new_shards(platform: Platform, served_tiny: str) -> None:
    account = fresh_account()
    evaluate(platform, served_tiny, account, "base")
    plus = evaluate(platform, served_tiny, account, "plus", dataset=HELDOUT_PLUS)
    new = sorted(set(shards(platform, HELDOUT_PLUS)) - set(shards(platform, HELDOUT)))
    assert len(new) == 1
    assert plus.inferred == new
    assert plus.inference_calls == CALLS_PER_SHARD
    progress = platform.evaluation(account, "plus").status.progress
    assert progress is not None and (progress.shards_reused, progress.shards_total) == (10, 11)
    assert platform.metrics_doc(account, "plus")["rows"] == 495


def test_other_inference_settings_infer_again(platform: Platform, served_tiny: str) -> None:
    account = fresh_account()
    evaluate(platform, served_tiny, account, "k5")
    k3 = evaluate(platform, served_tiny, account, "k3", top_k=3)
    assert k3.inference_calls == 10 * CALLS_PER_SHARD
    doc = platform.metrics_doc(account, "k3")
    # Three kept of ten labels cannot answer top-5.
    assert doc["top5Accuracy"] is None and doc["accuracy"] > 0.9
    digests = {k.split("/")[-2] for k in platform.prediction_files(account)}
    assert digests == {inference_digest({"topK": k}, np.arange(10)) for k in (5, 3)}
    # Execution settings are not part of the key.
    other_run = evaluate(platform, served_tiny, account, "run", batch_size=7, concurrency=1)
    assert other_run.inference_calls == 0


def test_another_account_never_reuses_this_accounts_cache(
    platform: Platform, served_tiny: str
) -> None:
    mine, theirs = fresh_account(), fresh_account()
    evaluate(platform, served_tiny, mine, "mine")
    before = platform.prediction_files(mine)
    out = evaluate(platform, served_tiny, theirs, "theirs")
    assert out.inference_calls == 10 * CALLS_PER_SHARD
    assert platform.prediction_files(mine) == before
    files = platform.prediction_files(theirs)
    assert len(files) == 10 and all(f.startswith(f"accounts/{theirs}/") for f in files)
    model = platform.records.get(Model, OWNER, MODEL)
    assert all(f"/predictions/{model.status.digest}/" in f for f in files)


def test_more_metrics_need_no_inference(platform: Platform, served_tiny: str) -> None:
    account = fresh_account()
    evaluate(platform, served_tiny, account, "acc", metrics=["accuracy"])
    doc = platform.metrics_doc(account, "acc")
    assert "accuracy" in doc and "confusionMatrix" not in doc and "ece" not in doc
    full = evaluate(platform, served_tiny, account, "full")
    assert full.inference_calls == 0
    doc = platform.metrics_doc(account, "full")
    assert {"confusionMatrix", "ece", "perClass", "top5Accuracy"} <= set(doc)


def test_a_lost_prediction_file_is_inferred_again(platform: Platform, served_tiny: str) -> None:
    account = fresh_account()
    evaluate(platform, served_tiny, account, "whole")
    lost = platform.prediction_files(account)[3]
    platform.blobs.delete(lost)
    again = evaluate(platform, served_tiny, account, "again")
    assert again.inferred == [lost.rsplit("/", 1)[1].removesuffix(".parquet")]
    assert again.inference_calls == CALLS_PER_SHARD
    assert platform.metrics_doc(account, "again")["rows"] == 450


def test_other_runtime_code_infers_again_and_leaves_other_entries(
    platform: Platform, served_tiny: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Predictions are keyed by the code that computed them (`runtime_version`): after a
    change of that code nothing is reused, and the old entries stay as they were."""
    import dyff.runtime

    account = fresh_account()
    evaluate(platform, served_tiny, account, "before")
    before = {k: platform.blobs.get(k) for k in platform.prediction_files(account)}
    assert len(before) == 10

    real = dyff.runtime.runtime_version()
    monkeypatch.setattr(dyff.runtime, "runtime_version", lambda: "0" * 64)
    after = evaluate(platform, served_tiny, account, "after")
    assert after.inferred == shards(platform, HELDOUT)
    assert after.inference_calls == 10 * CALLS_PER_SHARD
    assert set(platform.manifest(account, "after")).isdisjoint(before)
    # The earlier entries are untouched, byte for byte.
    assert {k: platform.blobs.get(k) for k in before} == before
    assert len(platform.prediction_files(account)) == 20

    monkeypatch.setattr(dyff.runtime, "runtime_version", lambda: real)
    again = evaluate(platform, served_tiny, account, "again")
    assert again.inference_calls == 0
    assert platform.manifest(account, "again") == platform.manifest(account, "before")


def test_runtime_version_names_the_serving_code(tmp_path: Path) -> None:
    """The version is a digest of the runtime's sources and library versions, and a dyff
    Bento is served with the current service code whatever its archive holds."""
    import shutil

    from dyff.models import SERVICE_SOURCE, unpack_bento
    from dyff.runtime import runtime_version

    assert len(runtime_version()) == 64
    bento = tmp_path / "bento"
    (bento / "src" / "model").mkdir(parents=True)
    (bento / "bento.yaml").write_text(
        "service: service:ImageClassifier\nentry_service: dyff-image-classifier\nname: dyff-model\n"
    )
    (bento / "src" / "service.py").write_text("# an older service\n")
    archive = tmp_path / "old.tar"
    shutil.make_archive(str(archive.with_suffix("")), "tar", bento)
    served = unpack_bento(archive, tmp_path / "unpacked")
    assert (served / "src" / "service.py").read_bytes() == SERVICE_SOURCE.read_bytes()
    # A user's service of the same target name keeps its own code.
    (bento / "bento.yaml").write_text(
        "service: service:ImageClassifier\nentry_service: image-classifier\nname: mine\n"
    )
    shutil.make_archive(str(tmp_path / "user"), "tar", bento)
    theirs = unpack_bento(tmp_path / "user.tar", tmp_path / "theirs")
    assert (theirs / "src" / "service.py").read_text() == "# an older service\n"
