"""Criteria end to end without inference (issue 12): an ImageFolder with a metadata.csv is
cut into shards and attribute files, predictions are stored as the evaluate workload
stores them, and `criteria_results` reads both from the blob store: the deliberately
harder slice is flagged, gates say which failed, and the criteria never touch the
prediction reuse key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dyff import criteria, layout
from dyff.datasets import iter_shards, open_dataset
from dyff.errors import WorkloadFailed
from dyff.evaluation import encode_predictions, inputs_for, prediction_table
from dyff.schema import (
    Criteria,
    Dataset,
    DatasetSource,
    DatasetSpec,
    DatasetStatus,
    EntityRef,
    Evaluation,
    EvaluationSpec,
    Gate,
    IntervalSpec,
    Model,
    ModelSource,
    ModelSpec,
    ModelStatus,
    ObjectMeta,
    Shard,
    SliceSpec,
    UploadSource,
)
from dyff.shard_lists import shards_of
from dyff.stores.file import FileBlobStore
from tests import factories
from tests.workloads.dataset_fixtures import (
    DIGIT_NAMES,
    by_class,
    digits,
    imagefolder_members,
    write_archive,
)

ACCOUNT = "acme"
SHA = "a" * 64
MODEL_DIGEST = "b" * 64
LIGHTING = ["day", "dusk", "indoor", "night"]
ACCURACY = {"day": 0.93, "dusk": 0.9, "indoor": 0.92, "night": 0.55}


def ingest(tmp: Path, blobs: FileBlobStore, rows: int = 800) -> tuple[Dataset, list[str]]:
    """An ImageFolder of digits whose metadata.csv gives each image a `lighting`; its
    shards and attribute files stored. Returns the Dataset and each row's lighting."""
    members = imagefolder_members(by_class(digits(rows)))
    lighting = [LIGHTING[(i * 7) % 4] for i in range(len(members))]
    text = "file_name,lighting\n" + "".join(
        f"{name},{light}\n" for (name, _), light in zip(members, lighting, strict=True)
    )
    archive = write_archive(tmp / "f.tar.gz", [*members, ("metadata.csv", text.encode())])
    (tmp / "scratch").mkdir()
    opened = open_dataset("imagefolder", archive, tmp / "scratch")
    shards: list[Shard] = []
    for s in iter_shards(opened, 250):
        blobs.put(layout.shard_key(ACCOUNT, s.sha256), s.data)
        assert s.attributes is not None and s.attributes_sha256 is not None
        blobs.put(layout.attributes_key(ACCOUNT, s.sha256, s.attributes_sha256), s.attributes)
        shards.append(s.shard())
    dataset = Dataset(
        metadata=ObjectMeta(name="d", namespace=ACCOUNT),
        spec=DatasetSpec(
            source=DatasetSource(form="imagefolder", upload=UploadSource(sha256=SHA, size_bytes=1))
        ),
        status=DatasetStatus(
            phase="Ready",
            rows=opened.rows,
            labels=opened.labels,
            attributes=opened.attributes,
        ),
    )
    factories.list_shards(blobs, dataset, shards)
    return dataset, lighting


def predict(
    blobs: FileBlobStore, dataset: Dataset, lighting: list[str], seed: int = 0
) -> list[str]:
    """Predictions whose accuracy depends on the lighting, stored per shard as the evaluate
    workload stores them; returns their keys in shard order."""
    rng = np.random.default_rng(seed)
    k = len(DIGIT_NAMES)
    keys = []
    from dyff.datasets import read_shard

    for shard in shards_of(blobs, dataset):
        table = read_shard(blobs.get(layout.shard_key(ACCOUNT, shard.sha256)))
        row_ids = np.asarray(table.column("row_id").to_pylist())
        labels = np.asarray(table.column("label").to_pylist())
        acc = np.array([ACCURACY[lighting[r]] for r in row_ids])
        right = rng.random(len(row_ids)) < acc
        top1 = np.where(right, labels, (labels + rng.integers(1, k, len(labels))) % k)
        topk = (top1[:, None] + np.arange(5)) % k
        top = np.where(
            right, rng.uniform(0.6, 1.0, len(labels)), rng.uniform(0.2, 0.7, len(labels))
        )
        scores = np.concatenate([top[:, None], np.repeat(((1 - top) / 5)[:, None], 4, 1)], 1)
        data = encode_predictions(prediction_table(row_ids, labels, topk, scores, np.arange(k)))
        key = layout.prediction_key(ACCOUNT, MODEL_DIGEST, "i" * 64, shard.sha256)
        blobs.put(key, data)
        keys.append(key)
    return keys


@pytest.fixture
def stored(tmp_path: Path) -> tuple[FileBlobStore, Dataset, list[str], list[str]]:
    blobs = FileBlobStore(tmp_path / "blobs")
    dataset, lighting = ingest(tmp_path, blobs)
    keys = predict(blobs, dataset, lighting)
    return blobs, dataset, lighting, keys


def test_the_harder_lighting_is_flagged_from_stored_files(
    stored: tuple[FileBlobStore, Dataset, list[str], list[str]], tmp_path: Path
) -> None:
    blobs, dataset, lighting, keys = stored
    spec = Criteria(
        intervals=IntervalSpec(resamples=300, seed=5),
        slices=[SliceSpec(by=["lighting"]), SliceSpec(by=["lighting", "colour"])],
        gates=[
            Gate(metric="accuracy", op=">=", value=0.7),
            Gate(metric="accuracy", op=">=", value=0.8, slice={"lighting": "night"}),
        ],
    )
    doc = criteria.criteria_results(
        blobs, keys, dataset, DIGIT_NAMES, spec, cache_dir=tmp_path / "cache"
    )
    assert doc["version"] == 1 and doc["rows"] == len(lighting)
    (by_lighting, crossed) = doc["slices"]
    assert [f["key"] for f in by_lighting["flagged"]] == [{"lighting": "night"}]
    supports = {v["key"]["lighting"]: v["support"] for v in by_lighting["values"]}
    assert supports == {light: lighting.count(light) for light in LIGHTING}
    assert [f["key"] for f in crossed["flagged"]] == [{"lighting": "night", "colour": "grayscale"}]
    gates = doc["gates"]
    assert [g["passed"] for g in gates["results"]] == [True, False]
    assert gates["failed"] == ["accuracy >= 0.8 on lighting=night"]
    json.dumps(doc, allow_nan=False)
    # the same predictions, attributes and criteria give the same document
    again = criteria.criteria_results(
        blobs, keys, dataset, DIGIT_NAMES, spec, cache_dir=tmp_path / "cache2"
    )
    assert again == doc


def test_intervals_alone_need_no_attributes(
    stored: tuple[FileBlobStore, Dataset, list[str], list[str]], tmp_path: Path
) -> None:
    blobs, dataset, _, keys = stored
    old = dataset.model_copy(deep=True)
    old.status.attributes = None
    bare = [s.model_copy(update={"attributes": None}) for s in shards_of(blobs, old)]
    factories.list_shards(blobs, old, bare)
    doc = criteria.criteria_results(
        blobs, keys, old, DIGIT_NAMES, None, cache_dir=tmp_path / "c", metrics_doc={}
    )
    whole = doc["intervals"]["metrics"]
    assert whole["accuracy"]["low"] < whole["accuracy"]["value"] < whole["accuracy"]["high"]
    assert whole["top5Accuracy"]["value"] is None  # metrics.json has none: not answered
    assert doc["slices"] == [] and doc["gates"]["passed"] is True
    with pytest.raises(WorkloadFailed) as info:
        criteria.criteria_results(
            blobs,
            keys,
            old,
            DIGIT_NAMES,
            Criteria(slices=[SliceSpec(by=["lighting"])]),
            cache_dir=tmp_path / "c",
        )
    assert info.value.reason == criteria.BAD_CRITERIA and "lighting" in info.value.message


def test_criteria_leave_the_prediction_reuse_key_alone(
    stored: tuple[FileBlobStore, Dataset, list[str], list[str]],
) -> None:
    blobs, dataset, _, _ = stored
    shards = shards_of(blobs, dataset)
    model = Model(
        metadata=ObjectMeta(name="m", namespace=ACCOUNT),
        spec=ModelSpec(
            source=ModelSource(form="bento", upload=UploadSource(sha256=SHA, size_bytes=1))
        ),
        status=ModelStatus(phase="Ready", digest=MODEL_DIGEST, labels=DIGIT_NAMES),
    )

    def evaluation(spec_criteria: Criteria | None) -> Evaluation:
        return Evaluation(
            metadata=ObjectMeta(name="e", namespace=ACCOUNT),
            spec=EvaluationSpec(
                model=EntityRef(name="m"), dataset=EntityRef(name="d"), criteria=spec_criteria
            ),
        )

    plain = inputs_for(evaluation(None), model, dataset, shards)
    with_criteria = inputs_for(
        evaluation(
            Criteria(
                intervals=IntervalSpec(resamples=5000, seed=9),
                slices=[SliceSpec(by=["lighting"])],
                gates=[Gate(metric="accuracy", op=">=", value=0.9)],
            )
        ),
        model,
        dataset,
        shards,
    )
    assert plain.inference_digest == with_criteria.inference_digest
    assert [plain.prediction_key(s) for s in plain.shards] == [
        with_criteria.prediction_key(s) for s in with_criteria.shards
    ]
