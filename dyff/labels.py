"""How a model's labels meet a dataset's: one rule, as a pure function.

A model predicts ids into its own label list; a dataset's rows carry ids into
the dataset's label list. Before any inference, `match_labels` decides how the
two meet, and the shim (at order time), the controller (once the model and
dataset are Ready) and the evaluate workload (last) all apply it:

- the same names, in any order: matched by name;
- an explicit `spec.labelMapping`, checked against both lists: `byIndex` (model
  id i is dataset id i; both sides need as many labels) or `map` (model label
  -> dataset label; model labels it leaves out are matched by name);
- otherwise, model labels of transformers' default form `LABEL_<n>`, or no
  name in common at all: refused (`LabelMismatch`), naming both label lists;
- a partial overlap: allowed, with the unmatched names reported. Predicting a
  model label the dataset lacks counts as wrong, and metrics are computed over
  the dataset's labels only.

A model without recorded labels (an image-form model) is taken to predict
dataset label ids, as before. No numpy here: the controller and the shim
import this module.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dyff.schema import LabelMapping

LABEL_MISMATCH = "LabelMismatch"
LABELS_PARTIALLY_MATCHED = "LabelsPartiallyMatched"
# transformers' id2label when nobody set one.
DEFAULT_LABEL = re.compile(r"LABEL_[0-9]+")
SHOWN = 10  # names shown per list in messages
NAME_CHARS = 40  # characters shown per name
HOW_TO_MAP = (
    "set spec.labelMapping to {byIndex: true} if model label i is dataset label i, "
    "or to {map: {MODEL_LABEL: DATASET_LABEL, ...}}"
)


def describe(names: Sequence[str]) -> str:
    """`N [a, b, ...]`: at most SHOWN names, each clipped, and how many more there are."""

    def clip(name: str) -> str:
        return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"

    shown = ", ".join(repr(clip(n)) for n in names[:SHOWN])
    more = f", … (+{len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return f"{len(names)} [{shown}{more}]"


@dataclass(frozen=True)
class LabelMatch:
    """The decision: refused (with a message and the field to blame) or how ids map."""

    allowed: bool
    # name, byIndex, map or image (no model labels: ids are dataset ids); refused.
    how: str
    # Model label id -> dataset label id, None where the model label has no match; None
    # as a whole for a model without labels (identity).
    model_to_dataset: tuple[int | None, ...] | None = None
    unmatched_model: tuple[str, ...] = ()
    unmatched_dataset: tuple[str, ...] = ()
    message: str = ""
    field: str | None = None

    @property
    def partial(self) -> bool:
        """Allowed, but some names on either side have no counterpart."""
        return self.allowed and bool(self.unmatched_model or self.unmatched_dataset)

    def partial_message(self) -> str:
        parts = []
        if self.unmatched_model:
            parts.append(
                f"model labels the dataset lacks (predicting one counts as wrong): "
                f"{describe(self.unmatched_model)}"
            )
        if self.unmatched_dataset:
            parts.append(
                f"dataset labels no model label matches (never predicted): "
                f"{describe(self.unmatched_dataset)}"
            )
        return "; ".join(parts)


def _refused(message: str, field: str) -> LabelMatch:
    return LabelMatch(False, "refused", message=message, field=field)


def _allowed(
    how: str, mapped: list[int | None], model: Sequence[str], dataset: Sequence[str]
) -> LabelMatch:
    hit = {d for d in mapped if d is not None}
    return LabelMatch(
        True,
        how,
        tuple(mapped),
        tuple(name for name, d in zip(model, mapped, strict=True) if d is None),
        tuple(name for i, name in enumerate(dataset) if i not in hit),
    )


def match_labels(
    model_labels: Sequence[str] | None,
    dataset_labels: Sequence[str],
    mapping: LabelMapping | None = None,
) -> LabelMatch:
    """Decide how `model_labels` (by model id) meet `dataset_labels` (by dataset id)."""
    dataset = list(dataset_labels)
    index: dict[str, int] = {}
    for i, name in enumerate(dataset):
        index.setdefault(name, i)
    if model_labels is None:
        if mapping is not None and mapping.map is not None:
            return _refused(
                "spec.labelMapping.map names model labels, but the model records none (an "
                "image-form model predicts dataset label ids: leave labelMapping out); "
                f"dataset labels {describe(dataset)}",
                "spec.labelMapping",
            )
        return LabelMatch(True, "image")
    model = list(model_labels)
    both = f"model labels {describe(model)}; dataset labels {describe(dataset)}"
    if mapping is not None and mapping.by_index:
        if len(model) != len(dataset):
            return _refused(
                f"spec.labelMapping.byIndex needs as many model labels as dataset labels: {both}",
                "spec.labelMapping",
            )
        return _allowed("byIndex", list(range(len(model))), model, dataset)
    if mapping is not None and mapping.map is not None:
        known = set(model)
        unknown_keys = [k for k in mapping.map if k not in known]
        if unknown_keys:
            return _refused(
                f"spec.labelMapping.map names labels the model lacks: "
                f"{describe(unknown_keys)}; {both}",
                "spec.labelMapping",
            )
        unknown_values = sorted({v for v in mapping.map.values() if v not in index})
        if unknown_values:
            return _refused(
                f"spec.labelMapping.map maps to labels the dataset lacks: "
                f"{describe(unknown_values)}; {both}",
                "spec.labelMapping",
            )
        mapped = [index[mapping.map[n]] if n in mapping.map else index.get(n) for n in model]
        return _allowed("map", mapped, model, dataset)
    by_name = [index.get(n) for n in model]
    if set(model) == set(dataset):
        return _allowed("name", by_name, model, dataset)
    if model and all(DEFAULT_LABEL.fullmatch(n) for n in model):
        return _refused(
            f"the model's labels are transformers' defaults (LABEL_<n>), which name no "
            f"class; {both}; {HOW_TO_MAP}",
            "spec.model",
        )
    if all(d is None for d in by_name):
        return _refused(
            f"the model's labels and the dataset's have no name in common; {both}; {HOW_TO_MAP}",
            "spec.model",
        )
    return _allowed("name", by_name, model, dataset)
