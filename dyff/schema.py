"""The one definition of dyff's entities.

Model, Dataset and Evaluation have the shape of Kubernetes objects
(apiVersion, kind, metadata, spec, status), so one document is at once a
custom resource, a Datastore/SQLite record and an HTTP response. The CRDs in
`crds/` are generated from these classes (`dyff.crdgen`); the cross-field and
immutability rules are declared once here as `Rule`s, which both pydantic
(at every edge) and the API server (as CEL) enforce.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from dyff.lifecycle import DATASET, EVALUATION, MODEL, Lifecycle

GROUP = "dyff.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

SHA256_PATTERN = r"^[a-f0-9]{64}$"
IMAGE_DIGEST_PATTERN = r"@sha256:[a-f0-9]{64}$"
# A whole image reference as Docker's grammar (distribution/reference) has it, pinned by
# digest: [registry[:port]/]repository[/more][:tag]@sha256:<64 hex>. RE2 and CEL-literal
# safe (character classes, no backslashes), so the CRD and pydantic check the same.
_DOMAIN_PART = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_PART = "[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE_PATTERN = (
    f"^(?:{_DOMAIN_PART}(?:[.]{_DOMAIN_PART})*(?::[0-9]{{1,5}})?/)?"
    f"{_PATH_PART}(?:/{_PATH_PART})*"
    "(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    "@sha256:[a-f0-9]{64}$"
)
URI_PATTERN = r"^(gs|file|local)://.+"
# A Kubernetes object name (RFC 1123 DNS subdomain, kept to a label so it can
# also name namespaces, Jobs and blob prefixes).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_CHARS = 63
# Every pattern here is read with RE2's meaning, which the API server (OpenAPI `pattern`, CEL
# `matches`) and pydantic-core (the Rust `regex` crate) share: `$` is the end of the text. Python's
# `re` lets `$` match before a final newline too, so Python code must use `re_search` (or
# `re.fullmatch`), never `re.search`/`re.match`, with them.

# Limits, declared once: pydantic enforces them at every edge and `dyff.crdgen` emits them
# as the CRDs' maxLength/maxItems/maxProperties/minimum/maximum (README, "Limits").
MAX_SIZE_BYTES = 2**40  # 1 TiB, an upload's or a blob's declared size (well inside int64)
MAX_LABELS = 64  # metadata labels of one object
MAX_ANNOTATION_CHARS = 256 * 1024  # Kubernetes' limit on all annotations together
MAX_FILENAME_CHARS = 255
MAX_QUANTITY_CHARS = 32  # a resource quantity such as `4Gi`
MAX_QUANTITY_INT = 2**53  # a quantity written as a YAML integer (`cpu: 2`)
# Kubernetes' quantity grammar (k8s.io/apimachinery resource.Quantity), unsigned: a request is
# never negative.
QUANTITY_PATTERN = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
MAX_GPUS = 64
MAX_OPAQUE_CHARS = 256  # uid, resourceVersion
# Kubernetes label syntax: an optional DNS-subdomain prefix and `/`, then a name of 63.
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def _qualified_name(key: str) -> str:
    # What the API server checks beyond the pattern: a prefix of 253, a name of 63.
    prefix, _, name = key.rpartition("/")
    if len(prefix) > 253 or len(name) > 63:
        raise ValueError("a label or annotation key is [prefix of 253/]name of 63")
    return key


LabelKey = Annotated[
    str,
    Field(min_length=1, max_length=317, pattern=LABEL_KEY_PATTERN),
    AfterValidator(_qualified_name),
]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
AnnotationKey = Annotated[
    str,
    Field(min_length=1, max_length=317, pattern=LABEL_KEY_PATTERN),
    AfterValidator(_qualified_name),
]
AnnotationValue = Annotated[str, Field(max_length=MAX_ANNOTATION_CHARS)]
# What a request through the HTTP API may carry (its edge bounds every input)...
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(max_length=MAX_LABELS, description="Labels, for filtering."),
]
# ...and what a record may hold: whatever the API server lets a custom resource have, so
# that every CR it accepted can be adopted (it bounds each key and value, not the count).
MetaLabels = Annotated[dict[LabelKey, LabelValue], Field(description="Labels, for filtering.")]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=MAX_NAME_CHARS)]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _re2(pattern: str) -> re.Pattern[str]:
    # `$` (unescaped) as RE2 reads it: the end of the text, never before a final newline.
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def re_search(pattern: str, text: str) -> bool:
    """CEL's `text.matches(pattern)` in Python: RE2's search, `$` only at the very end."""
    return _re2(pattern).search(text) is not None


def is_name(text: str) -> bool:
    """Whether `text` is a dyff name (`NAME_PATTERN`, at most `MAX_NAME_CHARS`)."""
    return len(text) <= MAX_NAME_CHARS and re_search(NAME_PATTERN, text)


@dataclass(frozen=True)
class Rule:
    """A validation rule declared once: CEL for the API server, Python for every other edge.

    `check` receives the object's JSON form (camelCase keys, absent fields
    missing) so it sees exactly what CEL's `self` sees. Transition rules
    (`oldSelf`) are enforced by the API server and by the record store on
    update, through `immutable`.
    """

    cel: str
    message: str
    check: Callable[[dict[str, Any]], bool] | None = None
    field_path: str | None = None


class Schema(BaseModel):
    """Base for every schema class: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=False,
    )
    # Rules that must hold of one value of this class.
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Schema:
        if self.rules:
            doc = self.model_dump(by_alias=True, exclude_none=True, mode="json")
            for rule in self.rules:
                if rule.check is not None and not rule.check(doc):
                    raise ValueError(rule.message)
        return self

    def wire(self) -> dict[str, Any]:
        """The JSON document of this value, as stored and served."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SpecSchema(Schema):
    """Base for what users write (a CR's spec, an HTTP body): strict types, as the API server
    checks them, so `"2"` is no integer and `"true"` no boolean on either side."""

    model_config = ConfigDict(strict=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        # The API server prunes a null of a non-nullable field (none of dyff's is nullable)
        # before defaulting: `public: null` is `public` left out, here as there.
        return _without_nulls(data)


def _without_nulls(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_nulls(v) for k, v in data.items() if v is not None}
    return data


def _exactly_one(doc: dict[str, Any], *names: str) -> bool:
    return sum(1 for n in names if n in doc) == 1


def _quantity_from_int(value: Any) -> Any:
    # `cpu: 2` is how YAML people write a quantity; it is kept as the string "2".
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= MAX_QUANTITY_INT:
            raise ValueError(f"a quantity written as an integer is 0..{MAX_QUANTITY_INT}")
        return str(value)
    return value


_SUFFIXES = {
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "P": 1e15, "E": 1e18, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
    "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


def quantity_value(quantity: str | int) -> float:
    """The number a Kubernetes quantity stands for (`500m` -> 0.5, `1Ki` -> 1024,
    `1e3` -> 1000); ValueError for anything `QUANTITY_PATTERN` refuses."""
    text = str(quantity)
    if not re_search(QUANTITY_PATTERN, text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number = re.match(r"[0-9.]+([eE][+-]?[0-9.]+)?", text)
    assert number is not None
    return float(number.group(0)) * _SUFFIXES[text[number.end() :]]


# A Kubernetes resource quantity (`2`, `500m`, `1.5Gi`), a string or an integer, as the
# API server's `x-kubernetes-int-or-string` field takes it (`dyff.crdgen` emits that form).
Quantity = Annotated[
    str,
    BeforeValidator(_quantity_from_int),
    Field(
        max_length=MAX_QUANTITY_CHARS,
        pattern=QUANTITY_PATTERN,
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
            "minimum": 0,
            "maximum": MAX_QUANTITY_INT,
        },
    ),
]


# ---------------------------------------------------------------- conditions


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Schema):
    """One aspect of an object's state, after the Kubernetes API conventions."""

    type: str = Field(description="Type of the condition; `Ready` summarises the object.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="One-word CamelCase reason for the last transition.",
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        max_length=1024,
    )
    message: str = Field(default="", description="Human-readable detail of the transition.")
    last_transition_time: datetime = Field(
        default_factory=utcnow,
        description="When the condition last changed status.",
    )
    observed_generation: int = Field(
        default=0, ge=0, description="The .metadata.generation this condition was set for."
    )


class Status(Schema):
    """What all three kinds report: phase, conditions, observedGeneration."""

    # The kind's phases (`dyff.lifecycle`): a phase outside them is refused.
    lifecycle: ClassVar[Lifecycle[Any] | None] = None

    phase: str | None = Field(default=None, description="Lifecycle phase, for humans.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Current conditions; `Ready` is the summary.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    observed_generation: int = Field(
        default=0, ge=0, description="The .metadata.generation the controller last acted on."
    )
    message: str | None = Field(default=None, description="Detail of the current phase.")

    @field_validator("conditions")
    @classmethod
    def _one_condition_per_type(cls, conditions: list[Condition]) -> list[Condition]:
        # The CRD's list-type map keyed by type refuses a second condition of a type.
        types = [c.type for c in conditions]
        if len(set(types)) != len(types):
            raise ValueError("conditions: one condition per type")
        return conditions

    @field_validator("phase")
    @classmethod
    def _phase_of_the_kind(cls, phase: str | None) -> str | None:
        if phase is not None and cls.lifecycle is not None:
            cls.lifecycle.check(phase)
        return phase

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def set_condition(
        self, type_: str, status: ConditionStatus, reason: str, message: str, generation: int
    ) -> None:
        """Set a condition, keeping lastTransitionTime unless the status changes."""
        old = self.condition(type_)
        if old is not None and old.status == status:
            old.reason, old.message, old.observed_generation = reason, message, generation
            return
        new = Condition(
            type=type_,
            status=status,
            reason=reason,
            message=message,
            observed_generation=generation,
        )
        self.conditions = [c for c in self.conditions if c.type != type_] + [new]


# ------------------------------------------------------------------ metadata


class ObjectMeta(Schema):
    """The part of Kubernetes ObjectMeta that dyff keeps in its records."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(
        description="Name, unique per kind in the account (a DNS label: `NAME_RULE`).",
        pattern=NAME_PATTERN,
        max_length=MAX_NAME_CHARS,
    )
    namespace: str = Field(
        description="The owning account; its entities live in the namespace of that name.",
        pattern=NAME_PATTERN,
        max_length=63,
    )
    uid: str | None = Field(
        default=None, max_length=MAX_OPAQUE_CHARS, description="Unique id, set at creation."
    )
    generation: int = Field(default=1, ge=1, description="Bumped on every change of spec.")
    resource_version: str | None = Field(
        default=None,
        max_length=MAX_OPAQUE_CHARS,
        description="Opaque version for optimistic concurrency.",
    )
    creation_timestamp: datetime | None = Field(default=None, description="When it was created.")
    deletion_timestamp: datetime | None = Field(
        default=None, description="Set when deletion was requested; the controller cleans up."
    )
    labels: MetaLabels = Field(default_factory=dict)
    annotations: dict[AnnotationKey, AnnotationValue] = Field(
        default_factory=dict, description="Annotations (256 KiB in all, as the API server)."
    )

    @field_validator("annotations")
    @classmethod
    def _annotations_size(cls, annotations: dict[str, str]) -> dict[str, str]:
        # The API server's limit on all annotations together, keys included.
        size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
        if size > MAX_ANNOTATION_CHARS:
            raise ValueError(f"annotations: at most {MAX_ANNOTATION_CHARS} bytes in all")
        return annotations


# --------------------------------------------------------------------- sources


class UploadSource(SpecSchema):
    """An archive or file the user uploads through the shim's upload URL."""

    sha256: str = Field(
        description="sha256 of the upload, hex.", pattern=SHA256_PATTERN, max_length=64
    )
    size_bytes: int = Field(description="Size of the upload in bytes.", ge=1, le=MAX_SIZE_BYTES)
    filename: str | None = Field(
        default=None,
        max_length=MAX_FILENAME_CHARS,
        description="Original file name; its extension tells the archive format.",
    )


class UriSource(SpecSchema):
    """An existing object in a blob store, named by URI and pinned by content."""

    rules = (
        Rule(
            cel="has(self.sha256)",
            message="a uri source needs a sha256",
            check=lambda d: "sha256" in d,
        ),
    )

    uri: str = Field(
        description="URI of the object in the platform's blob store: gs://BUCKET/accounts/"
        "ACCOUNT/... on GCS, local:///accounts/ACCOUNT/... on one machine.",
        pattern=URI_PATTERN,
        max_length=2048,
    )
    sha256: str | None = Field(
        default=None,
        description="sha256 of the object, hex; required.",
        pattern=SHA256_PATTERN,
        max_length=64,
    )
    size_bytes: int | None = Field(
        default=None, description="Size in bytes, if known.", ge=1, le=MAX_SIZE_BYTES
    )


class ImageSource(SpecSchema):
    """A container image running a BentoML service, pinned by digest."""

    rules = (
        Rule(
            cel=f"self.reference.matches('{IMAGE_DIGEST_PATTERN}')",
            message="an image source must be pinned by digest (...@sha256:<64 hex>)",
            check=lambda d: re_search(IMAGE_DIGEST_PATTERN, d["reference"]),
        ),
        Rule(
            cel=f"!self.reference.matches('{IMAGE_DIGEST_PATTERN}') || "
            f"self.reference.matches('{IMAGE_REFERENCE_PATTERN}')",
            message="an image reference is [registry/]repository[:tag]@sha256:<64 hex>, "
            "with a repository",
            check=lambda d: (
                not re_search(IMAGE_DIGEST_PATTERN, d["reference"])
                or re_search(IMAGE_REFERENCE_PATTERN, d["reference"])
            ),
        ),
    )

    reference: str = Field(
        description="Image reference, e.g. registry.example/m@sha256:<digest>.",
        min_length=1,
        max_length=512,
    )
    port: int = Field(default=3000, ge=1, le=65535, description="Port the BentoML service serves.")


ModelForm = Literal["transformers", "bento", "image"]
DatasetForm = Literal["parquet", "imagefolder"]
Task = Literal["image-classification"]


class ModelSource(SpecSchema):
    """Where a model comes from; exactly one of upload, uri, image."""

    rules = (
        Rule(
            cel="[has(self.upload), has(self.uri), has(self.image)].filter(x, x).size() == 1",
            message="exactly one of upload, uri, image must be set",
            check=lambda d: _exactly_one(d, "upload", "uri", "image"),
        ),
        Rule(
            cel="has(self.image) == (self.form == 'image')",
            message="form 'image' goes with an image source, and only with it",
            check=lambda d: ("image" in d) == (d["form"] == "image"),
        ),
    )

    form: ModelForm = Field(
        description="transformers (a model folder), bento (a bentoml export) or image."
    )
    upload: UploadSource | None = Field(default=None, description="Uploaded through the shim.")
    uri: UriSource | None = Field(default=None, description="An existing blob.")
    image: ImageSource | None = Field(default=None, description="A container image.")


class DatasetSource(SpecSchema):
    """Where a dataset comes from; exactly one of upload, uri."""

    rules = (
        Rule(
            cel="[has(self.upload), has(self.uri)].filter(x, x).size() == 1",
            message="exactly one of upload, uri must be set",
            check=lambda d: _exactly_one(d, "upload", "uri"),
        ),
    )

    form: DatasetForm = Field(
        description="parquet (a Parquet file, or a folder/archive in the Hugging Face datasets "
        "layout) or imagefolder (an archive of class folders). An archive holding only Parquet "
        "files is read as parquet, one holding only images as imagefolder, whatever the form."
    )
    upload: UploadSource | None = Field(default=None, description="Uploaded through the shim.")
    uri: UriSource | None = Field(default=None, description="An existing blob.")


# ---------------------------------------------------------------------- Model


class Resources(SpecSchema):
    """Compute resources for a workload container."""

    cpu: Quantity | None = Field(default=None, description="CPU request, a quantity: `2`, `500m`.")
    memory: Quantity | None = Field(
        default=None, description="Memory request, a quantity: `4Gi`, `512Mi`."
    )
    gpu: int | None = Field(default=None, ge=0, le=MAX_GPUS, description="nvidia.com/gpu limit.")


class ModelSpec(SpecSchema):
    """Desired state of a Model."""

    rules = (
        Rule(
            cel="self.source == oldSelf.source",
            message="source is immutable",
            field_path=".source",
        ),
    )

    task: Task = Field(default="image-classification", description="What the model does.")
    source: ModelSource = Field(description="Where the model comes from; immutable.")
    public: bool = Field(
        default=False, description="Readable and usable in evaluations by every account."
    )
    resources: Resources | None = Field(default=None, description="Resources for the model server.")


class ModelStatus(Status):
    """Observed state of a Model."""

    lifecycle = MODEL
    digest: str | None = Field(
        default=None, description="sha256 of the packaged model: its identity for reuse."
    )
    bento_uri: str | None = Field(default=None, description="Where the packaged Bento lives.")
    labels: list[str] | None = Field(default=None, description="Class labels the model predicts.")
    size_bytes: int | None = Field(default=None, ge=0, description="Size of the packaged model.")
    user_code: bool = Field(
        default=False,
        description="The model runs its owner's own service code (a Bento with its own "
        "service, or a container image): it is served isolated from dyff's credentials and "
        "spoken to only through the public protocol image-classification/v1.",
    )


# -------------------------------------------------------------------- Dataset


class DatasetSpec(SpecSchema):
    """Desired state of a Dataset."""

    rules = (
        Rule(
            cel="self.source == oldSelf.source",
            message="source is immutable",
            field_path=".source",
        ),
        Rule(
            cel="has(self.split) == has(oldSelf.split)"
            " && (!has(self.split) || self.split == oldSelf.split)",
            message="split is immutable",
            field_path=".split",
        ),
    )

    task: Task = Field(default="image-classification", description="What the data is for.")
    source: DatasetSource = Field(description="Where the data comes from; immutable.")
    split: str | None = Field(
        default=None,
        description="The split to ingest from a folder or archive in the Hugging Face layout "
        "(`data/<split>-NNNNN-of-NNNNN.parquet`, `<config>/<split>/…`), e.g. `test`; "
        "`<config>/<split>` when several configs have it. Default: `test` if present, else "
        "the only split there is; a split not present is refused naming those found. Not "
        "allowed for a single Parquet file or an ImageFolder. Immutable.",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$",
        max_length=200,
    )
    shard_rows: int = Field(
        default=1000, ge=1, le=1_000_000, description="Rows per Parquet shard after ingestion."
    )
    public: bool = Field(
        default=False, description="Readable and usable in evaluations by every account."
    )


class Shard(Schema):
    """One content-addressed Parquet shard of an ingested dataset."""

    sha256: str = Field(description="sha256 of the shard file, hex.", pattern=SHA256_PATTERN)
    rows: int = Field(ge=0, description="Rows in the shard.")
    first_row: int = Field(ge=0, description="Row id of the shard's first row.")
    attributes: str | None = Field(
        default=None,
        description="sha256 of the shard's attribute file (per-row attributes for slicing: "
        "`dyff.datasets`), stored beside the shard without changing its bytes.",
        pattern=SHA256_PATTERN,
    )


class ShardList(Schema):
    """Where a Dataset's shard list is: a JSON blob named by its sha256 (the list itself
    can grow past what a status, or etcd's 1.5 MiB object, may hold)."""

    sha256: str = Field(description="sha256 of the list's blob, hex.", pattern=SHA256_PATTERN)
    count: int = Field(ge=0, description="Number of shards.")


MAX_ATTRIBUTE_NAME_CHARS = 64
MAX_DATASET_ATTRIBUTES = 64  # dyff.datasets keeps at most 5 derived + 32 extra columns


class DatasetStatus(Status):
    """Observed state of a Dataset."""

    lifecycle = DATASET
    rows: int | None = Field(default=None, ge=0, description="Number of rows.")
    shard_list: ShardList | None = Field(
        default=None,
        description="The Parquet shards, listed in a blob (`dyff.shard_lists`) so that a "
        "dataset of any size keeps a small status.",
    )
    labels: list[str] | None = Field(default=None, description="Class labels, in id order.")
    attributes: list[Annotated[str, Field(max_length=MAX_ATTRIBUTE_NAME_CHARS)]] | None = Field(
        default=None,
        max_length=MAX_DATASET_ATTRIBUTES,
        description="Columns of the attribute files, by which evaluation results can be "
        "sliced: the derived width, height, aspect, brightness, colour, then the dataset's "
        "own (Hugging Face features other than image and label, an ImageFolder's subfolder, "
        "the columns of metadata.csv / metadata.jsonl).",
    )


# ----------------------------------------------------------------- Evaluation


class EntityRef(SpecSchema):
    """A reference to a Model or Dataset by name."""

    name: str = Field(
        description="Name of the referenced object.", pattern=NAME_PATTERN, max_length=63
    )
    account: str | None = Field(
        default=None,
        description="Owning account, if not the evaluation's own (the object must be public).",
        pattern=NAME_PATTERN,
        max_length=63,
    )


class InferenceConfig(SpecSchema):
    """How inference runs; part of the reuse key, so only fields that change outputs."""

    top_k: int = Field(default=5, ge=1, le=100, description="Labels kept per prediction.")


MAX_MAPPED_LABELS = 10_000
MAX_LABEL_CHARS = 256
LabelName = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]


class LabelMapping(SpecSchema):
    """How the model's labels meet the dataset's when their names differ; exactly one of
    byIndex, map. Without it, labels are matched by name (see `dyff.labels`)."""

    rules = (
        Rule(
            cel="[has(self.byIndex) && self.byIndex, has(self.map)].filter(x, x).size() == 1",
            message="exactly one of byIndex: true, map must be set",
            check=lambda d: int(bool(d.get("byIndex"))) + int("map" in d) == 1,
        ),
    )

    by_index: bool | None = Field(
        default=None,
        description="Model label id i is dataset label id i, whatever their names (e.g. a "
        "model left at LABEL_0..LABEL_N against a dataset of integer labels 0..N); both "
        "sides must have as many labels.",
    )
    # Its keys' bounds reach the CRD as a CEL rule on the map (`dyff.crdgen`).
    map: dict[LabelName, LabelName] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MAPPED_LABELS,
        description="Model label name -> dataset label name. Model labels left out are "
        "matched by name; every name must exist on its side.",
    )


class RunConfig(SpecSchema):
    """How the evaluation is executed; does not change the results."""

    batch_size: int = Field(default=32, ge=1, le=4096, description="Images per request.")
    concurrency: int = Field(default=4, ge=1, le=256, description="Requests in flight.")
    parallelism: int = Field(
        default=1, ge=1, le=1000, description="Pods working on shards at once (Indexed Job)."
    )


MetricName = Literal[
    "accuracy", "top5_accuracy", "precision", "recall", "f1", "confusion_matrix", "ece"
]
ALL_METRICS: list[MetricName] = [
    "accuracy",
    "top5_accuracy",
    "precision",
    "recall",
    "f1",
    "confusion_matrix",
    "ece",
]


# ------------------------------------------------ criteria beyond the metrics
# Criteria that need no inference (`dyff.criteria`): computed from the prediction files and
# the dataset's attribute files, so they never enter the prediction reuse key.

ATTRIBUTE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"  # as `dyff.datasets` keeps them
MAX_SLICE_SPECS = 16
MAX_SLICE_COLUMNS = 3  # columns crossed in one slice
MAX_GATES = 32
MAX_SLICE_VALUE_CHARS = 256  # dyff.datasets cuts attribute strings to this
MAX_SLICE_VALUE_INT = 2**53
MAX_RESAMPLES = 10_000  # dyff.stats.MAX_RESAMPLES
SLICE_VALUE_PATTERN = r"^[^\n]*$"
AttributeName = Annotated[
    str, Field(min_length=1, max_length=MAX_ATTRIBUTE_NAME_CHARS, pattern=ATTRIBUTE_NAME_PATTERN)
]


def _slice_value_from_int(value: Any) -> Any:
    # `site: 3` in YAML: an integer attribute's value, kept as its text "3".
    if isinstance(value, int) and not isinstance(value, bool):
        if not -MAX_SLICE_VALUE_INT <= value <= MAX_SLICE_VALUE_INT:
            raise ValueError(f"an integer slice value is within ±{MAX_SLICE_VALUE_INT}")
        return str(value)
    return value


# One value of an attribute column: its text (a bool column's values are "true"/"false"),
# or an integer, as the API server's int-or-string takes it.
SliceValue = Annotated[
    str,
    BeforeValidator(_slice_value_from_int),
    Field(
        max_length=MAX_SLICE_VALUE_CHARS,
        pattern=SLICE_VALUE_PATTERN,
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "pattern": SLICE_VALUE_PATTERN,
            "minimum": -MAX_SLICE_VALUE_INT,
            "maximum": MAX_SLICE_VALUE_INT,
        },
    ),
]


class IntervalSpec(SpecSchema):
    """Bootstrap confidence intervals of the headline metrics (percentile, over rows)."""

    resamples: int = Field(
        default=1000, ge=100, le=MAX_RESAMPLES, description="Bootstrap resamples."
    )
    level: float = Field(default=0.95, ge=0.5, le=0.999, description="Confidence level.")
    seed: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="Seed: the same predictions and seed give the same intervals.",
    )


class SliceSpec(SpecSchema):
    """Every metric per value of one attribute column, or of several crossed, and the
    slices whose accuracy is significantly below the rest's flagged (a one-sided
    two-proportion z-test of the slice against the other rows, Benjamini-Hochberg over the
    slices of this spec)."""

    by: list[AttributeName] = Field(
        min_length=1,
        max_length=MAX_SLICE_COLUMNS,
        description="Attribute columns (the dataset's status.attributes), crossed.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    q: float = Field(
        default=0.05, ge=0.001, le=0.5, description="False discovery rate of the flagged slices."
    )
    min_support: int = Field(
        default=30, ge=1, le=10**9, description="Slices with fewer rows are never flagged."
    )

    @field_validator("by")
    @classmethod
    def _columns_once(cls, by: list[str]) -> list[str]:
        if len(set(by)) != len(by):
            raise ValueError("by: each column at most once")
        return by


GateMetric = Literal[
    "accuracy", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1", "ece"
]


class Gate(SpecSchema):
    """A quality gate: a metric (of every row, or of one slice) against a threshold."""

    name: str | None = Field(
        default=None,
        max_length=MAX_NAME_CHARS,
        description="Name in messages (default: the gate written out).",
    )
    metric: GateMetric = Field(description="The metric compared.")
    op: Literal[">=", ">", "<=", "<"] = Field(description="metric OP value must hold.")
    value: float = Field(ge=0, le=1, description="The threshold.")
    slice: dict[AttributeName, SliceValue] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SLICE_COLUMNS,
        description="Only the rows with these attribute values (column: value).",
    )
    using: Literal["point", "lower_bound", "upper_bound"] = Field(
        default="point",
        description="Compare the metric itself, or a bound of its bootstrap interval "
        "(lower_bound for a gate that wants a metric high, upper_bound for ece).",
    )


PerturbationKind = Literal[
    "gaussian_noise", "gaussian_blur", "jpeg", "brightness", "contrast", "rotate"
]
MAX_PERTURBATIONS = 6  # each kind at most once
PERTURBATION_SEVERITIES = 5


class PerturbationSpec(SpecSchema):
    """A corruption applied to every image, decoded, before the model's processor
    (`dyff.perturbations`: ImageNet-C's severity tables where they apply), seeded per row,
    at each severity: the model's metrics per severity and its corruption error relative to
    the clean images. Each perturbed shard's predictions are cached under their own key
    (shard, kind, severity, seed), so adding a perturbation infers only it."""

    kind: PerturbationKind = Field(description="The corruption.")
    severities: list[Annotated[int, Field(ge=1, le=PERTURBATION_SEVERITIES)]] = Field(
        default_factory=lambda: list(range(1, PERTURBATION_SEVERITIES + 1)),
        min_length=1,
        max_length=PERTURBATION_SEVERITIES,
        description="Severities, 1 (mild) to 5 (severe), each at most once.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    seed: int = Field(
        default=0, ge=0, le=2**31 - 1, description="Seed of the random corruptions (per row)."
    )

    @field_validator("severities")
    @classmethod
    def _severities_once(cls, severities: list[int]) -> list[int]:
        if len(set(severities)) != len(severities):
            raise ValueError("severities: each at most once")
        return severities


class Criteria(SpecSchema):
    """Evaluation criteria beyond the standard metrics. Intervals, slices and gates need
    no inference: they are computed from the predictions (reused whatever the criteria)
    and the dataset's attributes. Perturbations infer only their perturbed shards."""

    intervals: IntervalSpec = Field(
        default_factory=IntervalSpec, description="Bootstrap intervals of every metric."
    )
    slices: list[SliceSpec] = Field(
        default_factory=list, max_length=MAX_SLICE_SPECS, description="Metrics per slice."
    )
    gates: list[Gate] = Field(
        default_factory=list, max_length=MAX_GATES, description="Quality gates."
    )
    perturbations: list[PerturbationSpec] = Field(
        default_factory=list,
        max_length=MAX_PERTURBATIONS,
        description="Robustness: metrics on corrupted images, each kind at most once.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["kind"],
        },
    )

    @field_validator("perturbations")
    @classmethod
    def _kinds_once(cls, perturbations: list[PerturbationSpec]) -> list[PerturbationSpec]:
        kinds = [p.kind for p in perturbations]
        if len(set(kinds)) != len(kinds):
            raise ValueError("perturbations: each kind at most once")
        return perturbations


class EvaluationSpec(SpecSchema):
    """Desired state of an Evaluation: a model run over a dataset."""

    rules = (
        Rule(cel="self.model == oldSelf.model", message="model is immutable", field_path=".model"),
        Rule(
            cel="self.dataset == oldSelf.dataset",
            message="dataset is immutable",
            field_path=".dataset",
        ),
    )

    model: EntityRef = Field(description="The model to evaluate; immutable.")
    dataset: EntityRef = Field(description="The dataset to evaluate on; immutable.")
    inference: InferenceConfig = Field(
        default_factory=InferenceConfig, description="Inference settings (part of the reuse key)."
    )
    metrics: list[MetricName] = Field(
        default_factory=lambda: list(ALL_METRICS),
        max_length=len(ALL_METRICS),
        description="Metrics to compute, each at most once.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    label_mapping: LabelMapping | None = Field(
        default=None,
        description="How model labels meet dataset labels when their names differ (part of "
        "the reuse key). Without it labels match by name, and a model whose labels share no "
        "name with the dataset's, or are transformers' defaults LABEL_<n>, is refused.",
    )
    run: RunConfig = Field(default_factory=RunConfig, description="Execution settings.")
    criteria: Criteria | None = Field(
        default=None,
        description="Criteria beyond the standard metrics: confidence intervals, slices, "
        "quality gates. They need no inference and are not part of the reuse key.",
    )

    @field_validator("metrics")
    @classmethod
    def _metrics_once(cls, metrics: list[MetricName]) -> list[MetricName]:
        # The CRD's list-type set refuses a duplicate the same way.
        if len(set(metrics)) != len(metrics):
            raise ValueError("metrics: each metric at most once")
        return metrics


class CriterionProgress(Schema):
    """One part of an evaluation's predictions: the dataset's own images (the metrics,
    intervals, slices and gates are computed from them, with no inference of their own),
    or one perturbation at one severity."""

    criterion: str = Field(
        max_length=64, description="`predictions`, or `perturbation KIND/SEVERITY`."
    )
    shards_total: int = Field(default=0, ge=0, description="Shards it needs predictions of.")
    shards_done: int = Field(default=0, ge=0, description="Shards with predictions.")
    shards_reused: int = Field(default=0, ge=0, description="Shards whose predictions were reused.")


class Progress(Schema):
    """How far an evaluation has come: over every part of its predictions (each shard, and
    each shard under each perturbation and severity), and by criterion."""

    shards_total: int = Field(default=0, ge=0, description="Shard predictions needed.")
    shards_done: int = Field(default=0, ge=0, description="Shard predictions there.")
    shards_reused: int = Field(
        default=0, ge=0, description="Shard predictions reused from earlier runs."
    )
    rows: int = Field(default=0, ge=0, description="Rows of the dataset predicted so far.")
    by_criterion: list[CriterionProgress] | None = Field(
        default=None,
        max_length=1 + MAX_PERTURBATIONS * PERTURBATION_SEVERITIES,
        description="The same counts by criterion (only where there are perturbations).",
    )


class Timings(Schema):
    """Where an evaluation's time went, in seconds (written by the evaluate workload)."""

    queued_s: float = Field(
        default=0.0, ge=0, description="Ordered (or its spec changed) to workload started."
    )
    model_start_s: float = Field(
        default=0.0, ge=0, description="Starting the model server: 0 when warm or none needed."
    )
    inference_s: float = Field(default=0.0, ge=0, description="Streaming shards through it.")
    metrics_s: float = Field(default=0.0, ge=0, description="Computing and writing metrics.")


class MetricsSummary(Schema):
    """Headline metrics, also shown by kubectl; the full set is in metrics.json."""

    accuracy: float | None = Field(default=None, description="Top-1 accuracy.")
    top5_accuracy: float | None = Field(
        default=None,
        description="Top-5 accuracy; absent when the model has at most 5 classes (it would be "
        "1.0 by construction) or fewer than 5 labels were kept per prediction.",
    )
    macro_f1: float | None = Field(default=None, description="Macro-averaged F1.")
    ece: float | None = Field(default=None, description="Expected calibration error.")
    accuracy_interval: list[float] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="[low, high]: top-1 accuracy's bootstrap interval (at "
        "spec.criteria.intervals.level, 95 % by default).",
    )


class EvaluationStatus(Status):
    """Observed state of an Evaluation."""

    lifecycle = EVALUATION
    progress: Progress | None = Field(default=None, description="Shards done, reused, rows.")
    metrics: MetricsSummary | None = Field(default=None, description="Headline metrics.")
    results_uri: str | None = Field(
        default=None, description="Prefix holding metrics.json and predictions."
    )
    model_digest: str | None = Field(default=None, description="Digest of the model evaluated.")
    timings: Timings | None = Field(
        default=None, description="Seconds queued, starting the model, inferring, on metrics."
    )


# ------------------------------------------------------------------- entities


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


# The condition an evaluation with quality gates gets (True: every gate passed).
GATES_CONDITION = "GatesPassed"
READY_COLUMN = PrinterColumn(
    "Ready", '.status.conditions[?(@.type=="Ready")].status', description="Ready condition"
)
PHASE_COLUMN = PrinterColumn("Phase", ".status.phase", description="Lifecycle phase")
AGE_COLUMN = PrinterColumn("Age", ".metadata.creationTimestamp", type="date")


# The API server lets a custom resource have any DNS-subdomain name (253 characters, dots);
# a dyff name is a DNS label (`ObjectMeta.name`). At the root of every CRD this rule makes the
# API server refuse the names pydantic refuses, so no CR is left that dyff cannot adopt.
# pydantic enforces it through `ObjectMeta.name` (its pattern and max_length).
NAME_RULE = Rule(
    cel=f"size(self.metadata.name) <= {MAX_NAME_CHARS}"
    f" && self.metadata.name.matches('{NAME_PATTERN}')",
    message=f"metadata.name must be a DNS label: at most {MAX_NAME_CHARS} characters, lowercase "
    f"letters, digits and '-', starting and ending with a letter or digit ({NAME_PATTERN})",
    check=lambda d: is_name(d["metadata"]["name"]),
)


class Entity(Schema):
    """A dyff object: a custom resource, a record and an API response alike."""

    model_config = ConfigDict(extra="ignore")

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]]
    printer_columns: ClassVar[tuple[PrinterColumn, ...]]
    spec_type: ClassVar[type[Schema]]
    status_type: ClassVar[type[Status]]
    # Phases in which a create of the same name restarts the object (`dyff.lifecycle`).
    restartable_phases: ClassVar[tuple[str, ...]] = ()
    # Rules on the whole object, emitted at the root of the CRD (`dyff.crdgen`).
    root_rules: ClassVar[tuple[Rule, ...]] = (NAME_RULE,)

    api_version: Literal["dyff.io/v1alpha1"] = Field(default="dyff.io/v1alpha1")
    kind: str
    metadata: ObjectMeta
    spec: Any
    status: Any = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def account(self) -> str:
        return self.metadata.namespace

    @property
    def phase(self) -> str | None:
        return self.status.phase if self.status is not None else None

    @model_validator(mode="after")
    def _kind_matches(self) -> Entity:
        if self.kind != self.kind_name:
            raise ValueError(f"kind must be {self.kind_name!r}, not {self.kind!r}")
        return self


class Model(Entity):
    """A model to evaluate: uploaded, referenced by URI, or a container image."""

    kind_name = "Model"
    plural = "models"
    short_names = ("dm",)
    printer_columns = (
        PrinterColumn("Form", ".spec.source.form", description="Model form"),
        PHASE_COLUMN,
        READY_COLUMN,
        AGE_COLUMN,
    )
    spec_type = ModelSpec
    status_type = ModelStatus
    restartable_phases = tuple(sorted(MODEL.restartable))

    kind: Literal["Model"] = "Model"
    spec: ModelSpec
    status: ModelStatus = Field(default_factory=ModelStatus)


class Dataset(Entity):
    """A dataset to evaluate on, ingested into content-addressed Parquet shards."""

    kind_name = "Dataset"
    plural = "datasets"
    short_names = ("dds",)
    printer_columns = (
        PrinterColumn("Rows", ".status.rows", type="integer", description="Rows"),
        PHASE_COLUMN,
        READY_COLUMN,
        AGE_COLUMN,
    )
    spec_type = DatasetSpec
    status_type = DatasetStatus
    restartable_phases = tuple(sorted(DATASET.restartable))

    kind: Literal["Dataset"] = "Dataset"
    spec: DatasetSpec
    status: DatasetStatus = Field(default_factory=DatasetStatus)


class Evaluation(Entity):
    """A model run over a dataset, with its predictions and metrics."""

    kind_name = "Evaluation"
    plural = "evaluations"
    short_names = ("deval",)
    printer_columns = (
        PrinterColumn("Model", ".spec.model.name", description="Model evaluated"),
        PrinterColumn("Dataset", ".spec.dataset.name", description="Dataset evaluated on"),
        PHASE_COLUMN,
        PrinterColumn(
            "Accuracy", ".status.metrics.accuracy", type="number", description="Top-1 accuracy"
        ),
        PrinterColumn(
            "Interval",
            ".status.metrics.accuracyInterval",
            description="Top-1 accuracy's bootstrap interval [low, high]",
        ),
        PrinterColumn(
            "Gates",
            f'.status.conditions[?(@.type=="{GATES_CONDITION}")].status',
            description="Whether the criteria's quality gates passed",
        ),
        READY_COLUMN,
        AGE_COLUMN,
    )
    spec_type = EvaluationSpec
    status_type = EvaluationStatus
    restartable_phases = tuple(sorted(EVALUATION.restartable))

    kind: Literal["Evaluation"] = "Evaluation"
    spec: EvaluationSpec
    status: EvaluationStatus = Field(default_factory=EvaluationStatus)


# --------------------------------------------------------- accounts and keys


class InternalRecord(Entity):
    """A record that is never a custom resource (accounts, keys, the shim's bookkeeping):
    no printer columns, a plain status, and a create of an existing one is refused."""

    short_names = ()
    printer_columns = ()
    status_type = Status
    restartable_phases = ()

    status: Status = Field(default_factory=Status)


class AccountSpec(Schema):
    """An account: the unit of ownership and isolation."""

    display_name: str | None = Field(
        default=None, max_length=256, description="Human name of the account."
    )


class Account(InternalRecord):
    """An account; its name is also the namespace of its entities."""

    kind_name = "Account"
    plural = "accounts"
    spec_type = AccountSpec

    kind: Literal["Account"] = "Account"
    spec: AccountSpec = Field(default_factory=AccountSpec)


class ApiKeySpec(Schema):
    """An API key. Only a hash of the secret is ever stored."""

    secret_hash: str = Field(description="sha256 of the key's secret, hex.", pattern=SHA256_PATTERN)
    expires: datetime | None = Field(default=None, description="When the key stops working.")
    revoked: bool = Field(default=False, description="Revoked keys never work again.")
    admin: bool = Field(default=False, description="May manage accounts and keys.")


class ApiKey(InternalRecord):
    """An API key of an account."""

    kind_name = "ApiKey"
    plural = "apikeys"
    spec_type = ApiKeySpec

    kind: Literal["ApiKey"] = "ApiKey"
    spec: ApiKeySpec


# ------------------------------------------------ shim bookkeeping records


class UploadTicketSpec(Schema):
    """Permission to upload one declared file for one Model or Dataset, once."""

    target_kind: Literal["Model", "Dataset"] = Field(description="Kind of the entity.")
    target_name: str = Field(description="Name of the entity.", pattern=NAME_PATTERN)
    key: str = Field(description="Blob key the upload is written to.")
    sha256: str = Field(description="Declared sha256 of the upload.", pattern=SHA256_PATTERN)
    size_bytes: int = Field(ge=1, description="Declared size of the upload.")
    token_hash: str = Field(description="sha256 of the upload token.", pattern=SHA256_PATTERN)
    expires: datetime = Field(description="When the ticket stops working.")


class UploadTicket(InternalRecord):
    """An upload ticket: open (no phase) -> Claimed -> Used, or back to Open on failure."""

    kind_name = "UploadTicket"
    plural = "uploadtickets"
    spec_type = UploadTicketSpec

    kind: Literal["UploadTicket"] = "UploadTicket"
    spec: UploadTicketSpec


class IdempotencySpec(Schema):
    """What a request carrying an Idempotency-Key did, so a retry gets the same answer."""

    request_hash: str = Field(description="sha256 of the request.", pattern=SHA256_PATTERN)
    target_kind: str = Field(description="Kind of the entity the request created.")
    target_name: str = Field(description="Name of that entity.")
    status_code: int = Field(
        description="HTTP status of the first answer; 0 while the first request runs."
    )
    response: dict[str, Any] | None = Field(
        default=None, description="Body of the first answer, replayed to every retry."
    )


class IdempotencyRecord(InternalRecord):
    """An Idempotency-Key seen from an account (its name is a hash of the key)."""

    kind_name = "Idempotency"
    plural = "idempotency"
    spec_type = IdempotencySpec

    kind: Literal["Idempotency"] = "Idempotency"
    spec: IdempotencySpec


# How long an Idempotency-Key is remembered: a retry within it gets the first answer; a
# reuse after it runs anew, and `dyff admin fsck` removes the record.
IDEMPOTENCY_TTL = timedelta(hours=24)


ENTITY_TYPES: dict[str, type[Entity]] = {
    t.kind_name: t
    for t in (Model, Dataset, Evaluation, Account, ApiKey, UploadTicket, IdempotencyRecord)
}
# The kinds that are custom resources.
RESOURCE_TYPES: tuple[type[Entity], ...] = (Model, Dataset, Evaluation)


def entity_type(kind: str) -> type[Entity]:
    try:
        return ENTITY_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(ENTITY_TYPES)}") from None


def parse_entity(doc: dict[str, Any]) -> Entity:
    """Validate a JSON document as the entity its `kind` names."""
    kind = doc.get("kind")
    if not isinstance(kind, str):
        raise ValueError("kind: required, one of " + ", ".join(sorted(ENTITY_TYPES)))
    return entity_type(kind).model_validate(doc)


def immutable_violations(spec_type: type[Schema], old: Schema, new: Schema) -> list[str]:
    """Messages of the transition rules (`oldSelf`) that `new` breaks; empty when fine."""
    old_doc, new_doc = old.wire(), new.wire()
    broken = []
    for rule in spec_type.rules:
        if rule.field_path is None:
            continue
        key = rule.field_path.lstrip(".")
        if old_doc.get(key) != new_doc.get(key):
            broken.append(f"spec.{key}: {rule.message}")
    return broken
