"""What an evaluation is made of, as pure logic: its inputs, its plan, its files.

An Evaluation runs a Model over a Dataset's shards. Each shard's predictions
are cached content-addressed, per *evaluating* account, at

    layout.prediction_key(account, model digest, inference digest, shard sha256)

so whatever was computed before — by an earlier evaluation, or by a run that
was killed half-way — is found again by name and never recomputed: `plan`
lists the shards whose prediction file exists (reused) and the ones still to
infer. The inference digest is `inference_digest`: the spec's inference
settings and the version of the code that computes predictions
(`dyff.runtime.runtime_version`: the client's decoding, the service's
preprocessing and forward pass, and their libraries' versions); only when
the model's labels differ from the dataset's (so predicted ids are remapped,
see `Inputs.label_map`) does the remapping join the digest, since
the same shard bytes then mean other predictions; an explicit
`spec.labelMapping` always joins it.

Labels are matched by `dyff.labels.match_labels` (re-exported here): a refused
match fails the evaluation with reason LabelMismatch before any inference. With
a partial overlap, model labels the dataset lacks get ids after the dataset's
(`Inputs.extra_labels`); predicting one is wrong, and metrics cover the
dataset's labels only.

Prediction files follow the contract in `dyff.results` and are written with
fixed Parquet options, so the same predictions give the same bytes.
Metrics are always computed from the prediction files of all shards, reused
or not (`results.stream_metrics`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dyff import layout, shard_lists
from dyff.access import usable
from dyff.errors import NotFound, WorkloadFailed
from dyff.labels import LABEL_MISMATCH, LabelMatch, match_labels
from dyff.lifecycle import lifecycle
from dyff.schema import (
    CriterionProgress,
    Dataset,
    Entity,
    EntityRef,
    Evaluation,
    Model,
    Progress,
    Shard,
)
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore

DEPENDENCY_NOT_READY = "DependencyNotReady"
DEPENDENCY_NOT_FOUND = "DependencyNotFound"

# The prediction file contract of dyff.results, as Arrow types.
PREDICTION_ARROW_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("predicted", pa.int32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("topk_labels", pa.list_(pa.int32()), nullable=False),
        pa.field("topk_scores", pa.list_(pa.float32()), nullable=False),
    ]
)
# Fixed writer options: the same predictions give the same bytes (as for dataset shards).
# Statistics on the scalar columns let queries skip row groups.
PREDICTION_WRITER_OPTIONS: dict[str, Any] = {
    "version": "2.6",
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": False,
    "write_statistics": ["row_id", "label", "predicted", "score", "correct"],
    "store_schema": False,
    "write_page_index": False,
    "write_page_checksum": False,
}
PREDICTION_ROW_GROUP_ROWS = 65_536


# ------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """An evaluation with its Model and Dataset, checked Ready, and the label space."""

    evaluation: Evaluation
    model: Model
    dataset: Dataset
    # The label names predictions are written in: the dataset's, then any model label
    # the dataset lacks. Dataset label ids keep their meaning.
    label_names: list[str]
    # Model label id -> id in `label_names`.
    label_map: np.ndarray
    inference_digest: str
    # The dataset's shards, in order (read from its shard list: `dyff.shard_lists`).
    shards: tuple[Shard, ...]
    # How the model's labels met the dataset's (`dyff.labels.match_labels`).
    match: LabelMatch | None = None

    @property
    def dataset_labels(self) -> list[str]:
        """The dataset's labels: ids 0..n-1, the classes metrics are computed over."""
        return self.label_names[: len(self.dataset.status.labels or [])]

    @property
    def extra_labels(self) -> list[str]:
        """Model labels the dataset lacks: prediction ids n.., always wrong."""
        return self.label_names[len(self.dataset.status.labels or []) :]

    @property
    def model_classes(self) -> int:
        """How many classes the model scores (an image-form model: the dataset's)."""
        return len(self.model.status.labels or self.dataset_labels)

    @property
    def top_k_kept(self) -> int:
        """Labels kept per prediction: topK, clamped to the model's classes (as the
        server does)."""
        return max(1, min(self.top_k, self.model_classes))

    def label_report(self) -> dict[str, Any]:
        """What metrics.json says about the label match: names of the extra ids, and the
        unmatched names on either side (only what is not empty)."""
        doc: dict[str, Any] = {}
        if self.extra_labels:
            doc["extraLabels"] = self.extra_labels
        if self.match is not None and self.match.partial:
            doc["labelMatch"] = {
                "unmatchedModelLabels": list(self.match.unmatched_model),
                "unmatchedDatasetLabels": list(self.match.unmatched_dataset),
            }
        return doc

    @property
    def model_digest(self) -> str:
        assert self.model.status.digest is not None
        return self.model.status.digest

    @property
    def top_k(self) -> int:
        return self.evaluation.spec.inference.top_k

    def variant_digest(self, variant: Variant) -> str:
        """The reuse key of a variant's predictions: the inference's, and for perturbed
        images the perturbation's (`perturbations.perturbation_key`: kind, severity, seed
        where it matters, the formulas' version)."""
        if variant.kind is None:
            return self.inference_digest
        from dyff.perturbations import perturbation_key

        corruption = perturbation_key(variant.kind, variant.severity, variant.seed)
        return layout.config_digest(
            {"inference": self.inference_digest, "perturbation": corruption}
        )

    def prediction_key(self, shard: Shard, variant: Variant | None = None) -> str:
        digest = self.variant_digest(variant or CLEAN)
        return layout.prediction_key(
            self.evaluation.account, self.model_digest, digest, shard.sha256
        )

    def prediction_prefix(self, variant: Variant | None = None) -> str:
        digest = self.variant_digest(variant or CLEAN)
        return layout.prediction_key(
            self.evaluation.account, self.model_digest, digest, "x"
        ).rsplit("/", 1)[0]


@dataclass(frozen=True)
class Variant:
    """Which images predictions are of: the dataset's own (`kind` None), or its images
    under one perturbation (`dyff.perturbations`) at one severity."""

    kind: str | None = None
    severity: int = 0
    seed: int = 0

    @property
    def criterion(self) -> str:
        """Its name in `status.progress.byCriterion` and metrics.json."""
        return "predictions" if self.kind is None else f"perturbation {self.kind}/{self.severity}"


CLEAN = Variant()


def perturbed_variants(evaluation: Evaluation) -> list[Variant]:
    """The evaluation's perturbations, each severity a variant, in the order asked."""
    criteria = evaluation.spec.criteria
    if criteria is None:
        return []
    return [
        Variant(p.kind, severity, p.seed)
        for p in criteria.perturbations
        for severity in sorted(p.severities)
    ]


def _is_ready(entity: Model | Dataset) -> bool:
    ready = entity.status.condition("Ready")
    succeeded = lifecycle(entity.kind_name).succeeded
    return ready is not None and ready.status == "True" and entity.status.phase == succeeded


def _dependency(
    records: RecordStore, kind: type[Model] | type[Dataset], ref: EntityRef, account: str
) -> Entity:
    owner = ref.account or account
    found = records.find(kind, owner, ref.name)
    # Another account's entity exists for us only if it is public (as in the shim).
    if found is None or not usable(found, account):
        raise WorkloadFailed(DEPENDENCY_NOT_FOUND, f"{kind.kind_name} {owner}/{ref.name} not found")
    if found.metadata.deletion_timestamp is not None or not _is_ready(found):
        raise WorkloadFailed(
            DEPENDENCY_NOT_READY,
            f"{kind.kind_name} {owner}/{ref.name} is {found.status.phase or 'Pending'}, not Ready",
        )
    return found


def label_space(
    dataset_labels: list[str], model_labels: list[str] | None, match: LabelMatch | None = None
) -> tuple[list[str], np.ndarray]:
    """(label names, model id -> name id) for an allowed `match` (by default, matching by
    name). The names are the dataset's, then each model label the dataset lacks, in model
    order: dataset label ids keep their meaning. A model without declared labels (an
    image-form model) is taken to predict dataset label ids."""
    names = list(dataset_labels)
    if match is None:
        match = match_labels(model_labels, names)
    if model_labels is None or match.model_to_dataset is None:
        return names, np.arange(len(names), dtype=np.int32)
    mapping = []
    for name, target in zip(model_labels, match.model_to_dataset, strict=True):
        if target is None:
            target = len(names)
            names.append(name)
        mapping.append(target)
    return names, np.asarray(mapping, dtype=np.int32)


# The public protocol a user's service is spoken to with (docs/serving-protocol.md).
USER_PROTOCOL = "image-classification/v1"


def serves_user_code(model: Model) -> bool:
    """The model runs its owner's code (a user's Bento, or an image): it is spoken to only
    through the public protocol, never dyff's fast path."""
    return model.status.user_code or model.spec.source.form == "image"


def inference_digest(
    inference: dict[str, Any], label_map: np.ndarray, *, protocol: str | None = None
) -> str:
    """The reuse key of everything but the model and the shard that computes a prediction:
    the inference settings, the runtime's code and libraries (`runtime_version`), a
    non-identity label map, and the protocol when it is not dyff's own (a user's service:
    its predictions never pass for ones dyff's own code made, and never the reverse)."""
    from dyff.runtime import runtime_version

    key = {**inference, "runtime": runtime_version()}
    if protocol is not None:
        key["protocol"] = protocol
    if not np.array_equal(label_map, np.arange(len(label_map))):
        key["labelMap"] = label_map.tolist()
    return layout.config_digest(key)


def dataset_shards(blobs: BlobStore, dataset: Dataset) -> list[Shard]:
    """A Ready dataset's shards; DependencyNotReady if its shard list cannot be read."""
    try:
        return shard_lists.shards_of(blobs, dataset)
    except (NotFound, ValueError) as exc:
        raise WorkloadFailed(
            DEPENDENCY_NOT_READY, f"Dataset {dataset.name}: its shard list is unreadable ({exc})"
        ) from exc


def inputs_for(
    evaluation: Evaluation, model: Model, dataset: Dataset, shards: Sequence[Shard]
) -> Inputs:
    """Inputs from records already read and checked (Ready, usable by the account), and
    the dataset's shards."""
    if not model.status.digest:
        raise WorkloadFailed(DEPENDENCY_NOT_READY, f"Model {model.name} has no digest yet")
    spec = evaluation.spec
    dataset_labels = dataset.status.labels or []
    match = match_labels(model.status.labels, dataset_labels, spec.label_mapping)
    if not match.allowed:
        # The shim and the controller refuse first; a CR written past them stops here.
        raise WorkloadFailed(LABEL_MISMATCH, match.message)
    names, label_map = label_space(dataset_labels, model.status.labels, match)
    inference = spec.inference.wire()
    if model.status.labels:
        # The server keeps at most the model's classes: topK 5 and 10 of a 4-class model
        # are the same predictions.
        inference["topK"] = min(spec.inference.top_k, len(model.status.labels))
    if spec.label_mapping is not None:
        # An explicit mapping is part of the key, whatever ids it gives: the same model and
        # dataset with another mapping never reuse predictions. Without one, the key is
        # the inference settings' (and a non-identity map's) as before.
        inference = {**inference, "labelMapping": spec.label_mapping.wire()}
    protocol = USER_PROTOCOL if serves_user_code(model) else None
    digest = inference_digest(inference, label_map, protocol=protocol)
    return Inputs(evaluation, model, dataset, names, label_map, digest, tuple(shards), match)


def resolve(records: RecordStore, blobs: BlobStore, evaluation: Evaluation) -> Inputs:
    """The evaluation's Model and Dataset (refs may name a public entity of another
    account), both Ready; WorkloadFailed with DependencyNotFound / DependencyNotReady."""
    spec = evaluation.spec
    model = _dependency(records, Model, spec.model, evaluation.account)
    dataset = _dependency(records, Dataset, spec.dataset, evaluation.account)
    assert isinstance(model, Model) and isinstance(dataset, Dataset)
    return inputs_for(evaluation, model, dataset, dataset_shards(blobs, dataset))


# --------------------------------------------------------------------- plan


@dataclass(frozen=True)
class VariantPlan:
    """A perturbed variant's predictions: its key per shard (dataset order), and the
    shards whose predictions it still lacks."""

    variant: Variant
    keys: list[str]
    to_infer: list[Shard]


@dataclass(frozen=True)
class Plan:
    """Which shards' predictions exist (reused) and which are still to infer: of the
    dataset's own images, and of each perturbed variant (`perturbed`)."""

    shards_total: int
    reused: int
    to_infer: list[Shard]
    # Every shard in dataset order, with its prediction key (the manifest).
    shards: list[Shard] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    rows_total: int = 0
    perturbed: list[VariantPlan] = field(default_factory=list)

    @property
    def rows_done(self) -> int:
        missing = {s.sha256 for s in self.to_infer}
        return sum(s.rows for s in self.shards if s.sha256 not in missing)

    def parts(self) -> list[VariantPlan]:
        """Every variant's plan, the dataset's own images first."""
        return [VariantPlan(CLEAN, self.keys, self.to_infer), *self.perturbed]

    def all_keys(self) -> set[str]:
        """Every prediction file the evaluation needs, of every variant."""
        return {k for part in self.parts() for k in part.keys}

    def reused_keys(self) -> set[str]:
        """The prediction files that existed when the plan was made."""
        out: set[str] = set()
        for part in self.parts():
            missing = {s.sha256 for s in part.to_infer}
            pairs = zip(self.shards, part.keys, strict=True)
            out.update(k for s, k in pairs if s.sha256 not in missing)
        return out

    def progress(self, done: set[str] | None = None) -> Progress:
        """Progress when the prediction files `done` exist (default: the reused ones)."""
        done = self.reused_keys() if done is None else done
        by = [
            CriterionProgress(
                criterion=part.variant.criterion,
                shards_total=len(part.keys),
                shards_done=sum(k in done for k in part.keys),
                shards_reused=len(part.keys) - len(part.to_infer),
            )
            for part in self.parts()
        ]
        return Progress(
            shards_total=sum(c.shards_total for c in by),
            shards_done=sum(c.shards_done for c in by),
            shards_reused=sum(c.shards_reused for c in by),
            rows=sum(s.rows for s, k in zip(self.shards, self.keys, strict=True) if k in done),
            by_criterion=by if self.perturbed else None,
        )


def plan_inputs(inputs: Inputs, blobs: BlobStore) -> Plan:
    """The plan for resolved inputs: one listing of each cache folder, not a stat per
    shard."""
    shards = list(inputs.shards)
    parts = []
    for variant in [CLEAN, *perturbed_variants(inputs.evaluation)]:
        present = {info.key for info in blobs.list(inputs.prediction_prefix(variant) + "/")}
        keys = [inputs.prediction_key(s, variant) for s in shards]
        # Shards hold their row ids, so no two shards of a dataset share a digest.
        to_infer = [s for s, key in zip(shards, keys, strict=True) if key not in present]
        parts.append(VariantPlan(variant, keys, to_infer))
    clean = parts[0]
    return Plan(
        shards_total=len(shards),
        reused=len(shards) - len(clean.to_infer),
        to_infer=clean.to_infer,
        shards=shards,
        keys=clean.keys,
        rows_total=sum(s.rows for s in shards),
        perturbed=parts[1:],
    )


def manifest_doc(plan: Plan) -> dict[str, Any]:
    """An evaluation's manifest (`layout.manifest_key`): the clean prediction files in
    shard order (what queries read), and each perturbed variant's."""
    doc: dict[str, Any] = {"files": plan.keys}
    if plan.perturbed:
        doc["perturbed"] = [
            {"kind": p.variant.kind, "severity": p.variant.severity, "seed": p.variant.seed,
             "files": p.keys}
            for p in plan.perturbed
        ]  # fmt: skip
    return doc


def plan(records: RecordStore, blobs: BlobStore, evaluation: Evaluation) -> Plan:
    """What running `evaluation` now would reuse and infer (for the controller and shim)."""
    return plan_inputs(resolve(records, blobs, evaluation), blobs)


def plan_progress(
    blobs: BlobStore, evaluation: Evaluation, model: Model, dataset: Dataset
) -> Progress:
    """The plan's progress (what is reused, by criterion) for a Ready model and dataset
    the controller has read."""
    inputs = inputs_for(evaluation, model, dataset, dataset_shards(blobs, dataset))
    return plan_inputs(inputs, blobs).progress()


def assigned(
    shards: Sequence[Shard], all_shards: Sequence[Shard], index: int, count: int
) -> list[Shard]:
    """The shards of `shards` that Indexed Job pod `index` of `count` infers: those at
    dataset positions i with i % count == index (a fixed split, whatever is cached)."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} outside 0..{count - 1}")
    mine = {s.sha256 for i, s in enumerate(all_shards) if i % count == index}
    return [s for s in shards if s.sha256 in mine]


# ------------------------------------------------------------ images, files


def prediction_table(
    row_ids: np.ndarray,
    labels: np.ndarray,
    topk_indices: np.ndarray,
    topk_scores: np.ndarray,
    label_map: np.ndarray,
) -> pa.Table:
    """One shard's predictions in the contract's columns; model ids mapped to label ids."""
    n, k = topk_indices.shape
    if k < 1 or len(row_ids) != n or len(labels) != n or topk_scores.shape != (n, k):
        raise ValueError("predictions do not match the shard's rows")
    ids = label_map[np.asarray(topk_indices, dtype=np.int64)].astype(np.int32)
    scores = np.ascontiguousarray(topk_scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int32)
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return pa.table(
        {
            "row_id": pa.array(np.asarray(row_ids, dtype=np.int64)),
            "label": pa.array(labels),
            "predicted": pa.array(ids[:, 0]),
            "score": pa.array(scores[:, 0]),
            "correct": pa.array(ids[:, 0] == labels),
            "topk_labels": pa.ListArray.from_arrays(offsets, pa.array(ids.reshape(-1))),
            "topk_scores": pa.ListArray.from_arrays(offsets, pa.array(scores.reshape(-1))),
        },
        schema=PREDICTION_ARROW_SCHEMA,
    )


def encode_predictions(table: pa.Table) -> bytes:
    """A prediction table as one deterministic Parquet file."""
    buf = io.BytesIO()
    with pq.ParquetWriter(buf, PREDICTION_ARROW_SCHEMA, **PREDICTION_WRITER_OPTIONS) as writer:
        writer.write_table(table, row_group_size=PREDICTION_ROW_GROUP_ROWS)
    return buf.getvalue()


# ------------------------------------------------------------------ metrics


def top5_answerable(top_k: int, n_model_labels: int | None) -> bool:
    """Stored top-k can answer top-5 accuracy if it kept 5, or every label the model has.
    (A model with at most 5 classes gets no top-5 accuracy at all: `metrics.compute`.)"""
    return top_k >= 5 or (n_model_labels is not None and n_model_labels <= top_k)


def encode_json(doc: dict[str, Any]) -> bytes:
    """Stable bytes for a JSON document."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
