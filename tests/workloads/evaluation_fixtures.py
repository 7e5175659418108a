"""A one-machine platform for the evaluation tests: SQLite records, a folder of blobs,
the real tiny model and digits datasets ingested by the real ingest workloads.

The platform is built once per session (`shared_platform`) and shared by the
evaluation test modules. Prediction caches are per evaluating account, so a
test that counts inference calls evaluates from an account of its own
(`fresh_account`) against the public model and datasets of `OWNER`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dyff import layout
from dyff.schema import (
    Dataset,
    DatasetSource,
    DatasetSpec,
    EntityRef,
    Evaluation,
    EvaluationSpec,
    InferenceConfig,
    Model,
    ModelSource,
    ModelSpec,
    ObjectMeta,
    RunConfig,
    UploadSource,
)
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore
from dyff.workloads.common import WorkloadConfig
from tests.workloads.dataset_fixtures import write_parquet

if TYPE_CHECKING:
    import pytest

OWNER = "acme"
MODEL = "digits-vit"
# The held-out digits split: 450 rows; and the same plus 10% more rows.
HELDOUT = "heldout"
HELDOUT_PLUS = "heldout-plus"
HELDOUT_ROWS = 450
SHARD_ROWS = 45  # 10 shards; 45 appended rows make exactly one more
# A bigger dataset for the crash tests, so that a run is still going when it is killed.
LONG = "long"
LONG_ROWS = 1797  # every digit the set has
LONG_SHARD_ROWS = 60

_accounts = itertools.count(1)


def fresh_account() -> str:
    """An account nobody has evaluated from yet (an empty prediction cache)."""
    return f"t{next(_accounts)}"


def heldout_examples(extra: int = 0) -> list[tuple[bytes, int]]:
    """The held-out digits split as (PNG, label), then `extra` rows from the train split."""
    from dyff.tinymodels import digits_png, digits_splits

    train, test = digits_splits()
    images = np.concatenate([test.images, train.images[:extra]])
    labels = np.concatenate([test.labels, train.labels[:extra]])
    return list(zip(digits_png(images), (int(t) for t in labels), strict=True))


class Platform:
    """Records and blobs as `dyff up` keeps them, with helpers to order evaluations."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.records_url = f"sqlite://{root / 'records.db'}"
        self.records = SqliteRecordStore(root / "records.db")
        self.blobs = FileBlobStore(root / "blobs")

    def config(self, account: str, name: str, **extra: Any) -> WorkloadConfig:
        return WorkloadConfig(
            records_url=self.records_url,
            blobs_url=self.blobs.url,
            account=account,
            name=name,
            scratch_dir=str(self.root / "scratch"),
            **extra,
        )

    def config_file(self, account: str, name: str, **extra: Any) -> Path:
        path = self.root / f"{account}-{name}.json"
        path.write_text(json.dumps(self.config(account, name, **extra).wire()))
        return path

    # ---- inputs, through the real ingest workloads

    def _upload(self, account: str, kind: str, name: str, data: bytes) -> UploadSource:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs.put(layout.upload_key(account, kind, name, sha), data)
        return UploadSource(sha256=sha, size_bytes=len(data))

    def add_dataset(
        self,
        name: str,
        examples: list[tuple[bytes, int]],
        shard_rows: int,
        account: str = OWNER,
        public: bool = True,
        names: list[str] | None = None,
    ) -> Dataset:
        """Ingest `examples` as a Parquet dataset; `names` are its ClassLabel names
        (default: the digits')."""
        from dyff.workloads.ingest_dataset import run as ingest

        path = self.root / f"{account}-{name}.parquet"
        path = write_parquet(path, examples, *([names] if names is not None else []))
        source = DatasetSource(form="parquet", upload=self._upload(
            account, "Dataset", name, path.read_bytes()))  # fmt: skip
        ds = Dataset(
            metadata=ObjectMeta(name=name, namespace=account),
            spec=DatasetSpec(source=source, shard_rows=shard_rows, public=public),
        )
        self.records.create(ds)
        ingest(self.config(account, name))
        ds = self.records.get(Dataset, account, name)
        assert ds.status.phase == "Ready", ds.status
        return ds

    def add_model(
        self,
        name: str,
        model_dir: Path,
        bento: Path,
        account: str = OWNER,
        public: bool = True,
    ) -> Model:
        """Ingest `model_dir` with the real workload; its Bento (built once per session) is
        stored first, so ingestion validates and reuses it instead of building again."""
        from dyff.models import model_digest
        from dyff.workloads.ingest_model import run as ingest

        self.blobs.put(layout.bento_key(account, model_digest(model_dir)), bento.read_bytes())
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(model_dir, arcname="model")
        source = ModelSource(form="transformers", upload=self._upload(
            account, "Model", name, buf.getvalue()))  # fmt: skip
        model = Model(
            metadata=ObjectMeta(name=name, namespace=account),
            spec=ModelSpec(source=source, public=public),
        )
        self.records.create(model)
        ingest(self.config(account, name))
        model = self.records.get(Model, account, name)
        assert model.status.phase == "Ready", model.status
        return model

    # ---- evaluations

    def order(
        self,
        account: str,
        name: str,
        *,
        dataset: str = HELDOUT,
        model: str = MODEL,
        top_k: int = 5,
        metrics: list[str] | None = None,
        batch_size: int = 32,
        concurrency: int = 4,
        model_owner: str = OWNER,
        dataset_owner: str = OWNER,
        criteria: dict[str, Any] | None = None,
    ) -> Evaluation:
        """Create an Evaluation record; refs name the owner only when it is another account."""
        spec: dict[str, Any] = {
            "model": EntityRef(name=model, account=None if model_owner == account else model_owner),
            "dataset": EntityRef(
                name=dataset, account=None if dataset_owner == account else dataset_owner
            ),
            "inference": InferenceConfig(top_k=top_k),
            "run": RunConfig(batch_size=batch_size, concurrency=concurrency),
        }
        if metrics is not None:
            spec["metrics"] = metrics
        if criteria is not None:
            spec["criteria"] = criteria
        ev = Evaluation(
            metadata=ObjectMeta(name=name, namespace=account), spec=EvaluationSpec(**spec)
        )
        return self.records.create(ev)[0]

    def evaluation(self, account: str, name: str) -> Evaluation:
        return self.records.get(Evaluation, account, name)

    def metrics_doc(self, account: str, name: str) -> dict[str, Any]:
        ev = self.evaluation(account, name)
        doc: dict[str, Any] = json.loads(
            self.blobs.get(layout.metrics_key(account, name, ev.metadata.uid or ""))
        )
        return doc

    def manifest(self, account: str, name: str) -> list[str]:
        ev = self.evaluation(account, name)
        files: list[str] = json.loads(
            self.blobs.get(layout.manifest_key(account, name, ev.metadata.uid or ""))
        )["files"]
        return files

    def prediction_files(self, account: str) -> list[str]:
        return [b.key for b in self.blobs.list(f"{layout.account_prefix(account)}/predictions/")]


_shared: dict[str, Platform] = {}


def shared_platform(factory: pytest.TempPathFactory, model_dir: Path, bento: Path) -> Platform:
    """The session's platform: the tiny model and the datasets, public, in account OWNER.
    Built on first use and shared by every evaluation test module."""
    if "p" not in _shared:
        p = Platform(factory.mktemp("eval-platform"))
        p.add_model(MODEL, model_dir, bento)
        p.add_dataset(HELDOUT, heldout_examples(), SHARD_ROWS)
        p.add_dataset(HELDOUT_PLUS, heldout_examples(HELDOUT_ROWS // 10), SHARD_ROWS)
        from dyff.tinymodels import digits_png, digits_splits

        train, test = digits_splits()
        images = np.concatenate([test.images, train.images])[:LONG_ROWS]
        labels = np.concatenate([test.labels, train.labels])[:LONG_ROWS]
        long = list(zip(digits_png(images), (int(t) for t in labels), strict=True))
        p.add_dataset(LONG, long, LONG_SHARD_ROWS)
        _shared["p"] = p
    return _shared["p"]
