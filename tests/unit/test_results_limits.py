"""The results engine refuses every out-of-range query cleanly (Invalid, naming the
parameter): no query, however it was built, makes polars raise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from dyff.errors import Invalid
from dyff.results import (
    MAX_LABEL_ID,
    MAX_LIMIT,
    MAX_OFFSET,
    PREDICTION_SCHEMA,
    PredictionQuery,
    Results,
)


@pytest.fixture
def results(tmp_path: Path) -> Results:
    n = 20
    frame = pl.DataFrame(
        {
            "row_id": list(range(n)),
            "label": [i % 3 for i in range(n)],
            "predicted": [(i * 7) % 3 for i in range(n)],
            "score": [i / n for i in range(n)],
            "correct": [i % 3 == (i * 7) % 3 for i in range(n)],
            "topk_labels": [[i % 3, (i + 1) % 3] for i in range(n)],
            "topk_scores": [[0.6, 0.4] for _ in range(n)],
        },
        schema=PREDICTION_SCHEMA,
    )
    path = tmp_path / "p.parquet"
    frame.write_parquet(path)
    return Results([path])


BAD: list[tuple[str, Any]] = [
    ("offset", -1),
    ("offset", MAX_OFFSET + 1),
    ("offset", 2**63),
    ("offset", 10**30),
    ("limit", 0),
    ("limit", -5),
    ("limit", MAX_LIMIT + 1),
    ("limit", 2**64),
    ("label", [-1]),
    ("label", [MAX_LABEL_ID + 1]),
    ("label", [2**40]),
    ("label", [1, 1]),
    ("label", list(range(1001))),
    ("predicted", [2**31]),
    ("predicted", [0, 2, 0]),
    ("columns", ["row_id", "row_id"]),
    ("columns", ["score", "label", "score"]),
    ("columns", ["nope"]),
    ("min_score", -0.1),
    ("min_score", float("nan")),
    ("max_score", 1.5),
    ("max_score", float("inf")),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={str(v)[:20]}" for f, v in BAD])
def test_out_of_range_is_refused_at_every_door(results: Results, field: str, value: Any) -> None:
    # Validated construction refuses it...
    with pytest.raises(ValidationError):
        PredictionQuery(**{field: value})
    # ...and a query built around validation is refused by the engine, naming the field.
    q = PredictionQuery.model_construct(**{**PredictionQuery().model_dump(), field: value})
    with pytest.raises(Invalid) as rows:
        results.rows(q)
    with pytest.raises(Invalid) as count:
        results.count(q)
    alias = PredictionQuery.model_fields[field].alias or field
    assert rows.value.field == count.value.field == alias
    # A valid query changed after it was made is checked too.
    q = PredictionQuery()
    object.__setattr__(q, field, value)
    with pytest.raises(Invalid):
        results.rows(q)


def test_bounds_themselves_are_accepted(results: Results) -> None:
    far = results.rows(PredictionQuery(offset=MAX_OFFSET, limit=MAX_LIMIT))
    assert far.height == 0
    q = PredictionQuery(
        label=[0, MAX_LABEL_ID], predicted=[0, 1, 2], columns=list(PREDICTION_SCHEMA)
    )
    assert results.rows(q).height == results.count(q) > 0
    picked = results.rows(PredictionQuery(columns=["score", "row_id"]))
    assert picked.columns == ["score", "row_id"]
