"""Small valid entities for tests."""

from __future__ import annotations

import hashlib

from dyff import shard_lists
from dyff.schema import (
    Dataset,
    DatasetSource,
    DatasetSpec,
    EntityRef,
    Evaluation,
    EvaluationSpec,
    Model,
    ModelSource,
    ModelSpec,
    ObjectMeta,
    Shard,
    UploadSource,
)
from dyff.stores.blobs import BlobStore

SHA = hashlib.sha256(b"model").hexdigest()


def model(name: str = "m1", account: str = "acme", labels: dict[str, str] | None = None) -> Model:
    return Model(
        metadata=ObjectMeta(name=name, namespace=account, labels=labels or {}),
        spec=ModelSpec(
            source=ModelSource(form="transformers", upload=UploadSource(sha256=SHA, size_bytes=10))
        ),
    )


def dataset(name: str = "d1", account: str = "acme") -> Dataset:
    return Dataset(
        metadata=ObjectMeta(name=name, namespace=account),
        spec=DatasetSpec(
            source=DatasetSource(form="parquet", upload=UploadSource(sha256=SHA, size_bytes=10))
        ),
    )


def evaluation(
    name: str = "e1", account: str = "acme", model: str = "m1", dataset: str = "d1"
) -> Evaluation:
    return Evaluation(
        metadata=ObjectMeta(name=name, namespace=account),
        spec=EvaluationSpec(model=EntityRef(name=model), dataset=EntityRef(name=dataset)),
    )


def list_shards(blobs: BlobStore, dataset: Dataset, shards: list[Shard]) -> None:
    """Store `shards` as the dataset's shard list and name it in its status, as ingestion
    does."""
    dataset.status.shard_list, _ = shard_lists.store(blobs, dataset.account, shards)
