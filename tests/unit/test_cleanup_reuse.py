"""Deleting an evaluation never deletes prediction files that an unfinished evaluation of
the account is reusing: it names them in its manifest only when it completes."""

from __future__ import annotations

import json
from pathlib import Path

from controller.cleanup import cleanup
from dyff import layout
from dyff.evaluation import resolve
from dyff.lifecycle import settle
from dyff.schema import Dataset, Evaluation, Model, Shard
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from tests import factories


def world(tmp_path: Path) -> tuple[SqliteRecordStore, FileBlobStore, list[str]]:
    """A Ready model and dataset, evaluation e1 Complete with its manifest and predictions."""
    records, blobs = SqliteRecordStore(tmp_path / "r.db"), FileBlobStore(tmp_path / "b")
    model, dataset = factories.model(), factories.dataset()
    model.status.digest, model.status.labels = "a" * 64, ["x", "y"]
    dataset.status.labels = ["x", "y"]
    factories.list_shards(blobs, dataset, [Shard(sha256=c * 64, rows=5, first_row=5 * i)
                                           for i, c in enumerate("bc")])  # fmt: skip
    for entity in (model, dataset):
        records.create(entity)
        settle(entity.status, "Ready", "True", "Done", "", 1)

        def ready(stored: Model | Dataset, status: object = entity.status) -> None:
            stored.status = status  # type: ignore[assignment]

        records.mutate(type(entity), "acme", entity.name, ready)
    records.create(factories.evaluation("e1"))
    e1 = records.get(Evaluation, "acme", "e1")
    inputs = resolve(records, blobs, e1)
    files = [inputs.prediction_key(s) for s in inputs.shards]
    for key in files:
        blobs.put(key, b"predictions")
    uid = e1.metadata.uid or ""
    blobs.put(
        layout.manifest_key("acme", "e1", uid),
        json.dumps({"files": files}).encode(),
    )

    def complete(e: Evaluation) -> None:
        e.status.phase = "Complete"

    records.mutate(Evaluation, "acme", "e1", complete)
    assert records.get(Model, "acme", "m1") and records.get(Dataset, "acme", "d1")
    return records, blobs, files


def test_files_a_running_evaluation_reuses_are_kept(tmp_path: Path) -> None:
    records, blobs, files = world(tmp_path)
    records.create(factories.evaluation("e2"))  # the same model and dataset, still running

    def running(e: Evaluation) -> None:
        e.status.phase = "Running"

    records.mutate(Evaluation, "acme", "e2", running)
    cleanup(records, blobs, records.get(Evaluation, "acme", "e1"))
    assert all(blobs.exists(key) for key in files)


def test_files_nothing_else_uses_are_deleted(tmp_path: Path) -> None:
    records, blobs, files = world(tmp_path)
    records.create(factories.evaluation("e3"))  # finished: it would have its own manifest

    def failed(e: Evaluation) -> None:
        e.status.phase = "Failed"

    records.mutate(Evaluation, "acme", "e3", failed)
    cleanup(records, blobs, records.get(Evaluation, "acme", "e1"))
    assert not any(blobs.exists(key) for key in files)


def test_deleting_a_dataset_deletes_its_attribute_files_and_keeps_anothers(
    tmp_path: Path,
) -> None:
    """Two datasets of one account share a shard with other metadata: deleting one takes
    its attribute file (and none of the other's), the shared shard stays."""
    from tests import factories

    records = SqliteRecordStore(tmp_path / "records.db")
    blobs = FileBlobStore(tmp_path / "blobs")
    shard, mine, theirs = "12" * 32, "aa" * 32, "bb" * 32
    for name, attrs in (("d1", mine), ("d2", theirs)):
        dataset, _ = records.create(factories.dataset(name))
        factories.list_shards(
            blobs, dataset, [Shard(sha256=shard, rows=1, first_row=0, attributes=attrs)]
        )
        records.update(dataset)
        blobs.put(layout.attributes_key("acme", shard, attrs), b"attributes")
    blobs.put(layout.shard_key("acme", shard), b"shard")
    cleanup(records, blobs, records.get(Dataset, "acme", "d1"))
    assert not blobs.exists(layout.attributes_key("acme", shard, mine))
    assert blobs.exists(layout.attributes_key("acme", shard, theirs))
    assert blobs.exists(layout.shard_key("acme", shard))


def test_deleting_a_dataset_deletes_its_shard_list_unless_another_names_it(
    tmp_path: Path,
) -> None:
    from tests import factories

    records = SqliteRecordStore(tmp_path / "records.db")
    blobs = FileBlobStore(tmp_path / "blobs")
    same = [Shard(sha256="12" * 32, rows=1, first_row=0)]
    other = [Shard(sha256="34" * 32, rows=1, first_row=0)]
    for name, shards in (("d1", same), ("d2", same), ("d3", other)):
        dataset, _ = records.create(factories.dataset(name))
        factories.list_shards(blobs, dataset, shards)
        records.update(dataset)

    def list_key(name: str) -> str:
        listed = records.get(Dataset, "acme", name).status.shard_list
        assert listed is not None
        return layout.shard_list_key("acme", listed.sha256)

    shared, own = list_key("d1"), list_key("d3")
    cleanup(records, blobs, records.get(Dataset, "acme", "d3"))
    assert not blobs.exists(own)
    cleanup(records, blobs, records.get(Dataset, "acme", "d1"))
    assert blobs.exists(shared)  # d2 names the same list
    records.delete(Dataset, "acme", "d1")
    cleanup(records, blobs, records.get(Dataset, "acme", "d2"))
    assert not blobs.exists(shared)


def test_perturbed_predictions_are_kept_while_an_evaluation_lists_or_plans_them(
    tmp_path: Path,
) -> None:
    from dyff.evaluation import Variant, resolve

    records, blobs, files = world(tmp_path)
    doc = factories.evaluation("e2").wire()
    doc["spec"]["criteria"] = {"perturbations": [{"kind": "contrast", "severities": [2]}]}
    records.create(Evaluation.model_validate(doc))
    e2 = records.get(Evaluation, "acme", "e2")
    inputs = resolve(records, blobs, e2)
    perturbed = [inputs.prediction_key(s, Variant("contrast", 2)) for s in inputs.shards]
    assert not set(perturbed) & set(files)
    for key in perturbed:
        blobs.put(key, b"predictions")

    def running(e: Evaluation) -> None:
        e.status.phase = "Running"

    records.mutate(Evaluation, "acme", "e2", running)
    # e1's manifest lists them too (as a finished evaluation with that criterion would).
    manifest = {"files": files, "perturbed": [{"kind": "contrast", "severity": 2, "seed": 0,
                                               "files": perturbed}]}  # fmt: skip
    e1 = records.get(Evaluation, "acme", "e1")
    blobs.put(
        layout.manifest_key("acme", "e1", e1.metadata.uid or ""), json.dumps(manifest).encode()
    )
    assert layout.manifest_files(manifest) == set(files) | set(perturbed)
    cleanup(records, blobs, e1)
    assert all(blobs.exists(key) for key in files + perturbed)  # e2 will reuse them all

    def failed(e: Evaluation) -> None:
        e.status.phase = "Failed"

    records.mutate(Evaluation, "acme", "e2", failed)
    blobs.put(
        layout.manifest_key("acme", "e1", e1.metadata.uid or ""), json.dumps(manifest).encode()
    )
    cleanup(records, blobs, e1)  # nothing plans them now
    assert not any(blobs.exists(key) for key in files + perturbed)
