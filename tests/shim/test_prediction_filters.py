"""The predictions query by dataset attribute (`slice`) and by perturbation (issue 12):
rows of one slice value only, rows of a perturbed variant's files, and clear 422s."""

from __future__ import annotations

import hashlib
import io
import json

import polars as pl

from dyff import layout
from dyff.evaluation import encode_predictions, prediction_table
from dyff.schema import Dataset, Evaluation, Shard
from tests import factories
from tests.shim.conftest import Shim
from tests.shim.evaluations_with_results import SHARD_ROWS, complete, rows_of, shard_digest
from tests.shim.test_api import assert_problem, order, setup_pair

N = 2 * SHARD_ROWS


def lighting(row: int) -> str:
    return "night" if row % 4 == 0 else "day"


def with_attributes(shim: Shim, account: str) -> None:
    """The dataset's shards with a `lighting` attribute file each (one value a hostile text)."""
    listed = []
    for i in range(2):
        shard = shard_digest(f"shard-{i}")
        ids = list(range(i * SHARD_ROWS, (i + 1) * SHARD_ROWS))
        values = [lighting(r) if r != 7 else "'); DROP TABLE x; --" for r in ids]
        buf = io.BytesIO()
        pl.DataFrame(
            {"row_id": ids, "lighting": values, "width": [8 + r % 3 for r in ids]}
        ).write_parquet(buf)
        data = buf.getvalue()
        attrs = hashlib.sha256(data).hexdigest()
        shim.blobs.put(layout.attributes_key(account, shard, attrs), data)
        listed.append(Shard(sha256=shard, rows=SHARD_ROWS, first_row=ids[0], attributes=attrs))

    def change(d: Dataset) -> None:
        factories.list_shards(shim.blobs, d, listed)
        d.status.attributes = ["lighting", "width"]

    shim.records.mutate(Dataset, account, "d", change)


def with_perturbation(shim: Shim, account: str, name: str) -> list[bool]:
    """A perturbed variant in the manifest: every night row wrong under it."""
    evaluation = shim.records.get(Evaluation, account, name)
    manifest_key = layout.manifest_key(account, name, evaluation.metadata.uid or "")
    manifest = json.loads(shim.blobs.get(manifest_key))
    right = [lighting(r) == "day" for r in range(N)]
    files = []
    for i in range(2):
        part = right[i * SHARD_ROWS : (i + 1) * SHARD_ROWS]
        row_ids, labels, topk, scores, label_map = rows_of(part, offset=i * SHARD_ROWS)
        data = encode_predictions(prediction_table(row_ids, labels, topk, scores, label_map))
        key = layout.prediction_key(account, "m", "noise-3", shard_digest(f"shard-{i}"))
        shim.blobs.put(key, data)
        files.append(key)
    manifest["perturbed"] = [{"kind": "gaussian_noise", "severity": 3, "seed": 0, "files": files}]
    shim.blobs.put(manifest_key, json.dumps(manifest).encode())
    return right


def test_predictions_by_slice_and_by_perturbation(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        assert c.post("/v1/evaluations", json={"name": "e", **order()}).status_code == 201
        complete(shim, account, "e", [True] * N)
        url = "/v1/evaluations/e/predictions"
        assert_problem(
            c.get(url, params={"slice": "lighting:night"}), 422, "query.slice"
        )  # no files

        with_attributes(shim, account)
        night = c.get(url, params={"slice": "lighting:night", "limit": 1000}).json()
        assert night["total"] == N // 4
        assert [r["row_id"] for r in night["rows"]] == [r for r in range(N) if r % 4 == 0]
        crossed = c.get(url, params=[("slice", "lighting:day"), ("slice", "width:9")]).json()
        assert crossed["total"] == sum(
            1 for r in range(N) if lighting(r) == "day" and 8 + r % 3 == 9 and r != 7
        )
        hostile = c.get(url, params={"slice": "lighting:'); DROP TABLE x; --"}).json()
        assert [r["row_id"] for r in hostile["rows"]] == [7]
        assert_problem(c.get(url, params={"slice": "colour:grey"}), 422, "query.slice")
        assert_problem(c.get(url, params={"slice": "lighting"}), 422, "query.slice")
        twice = [("slice", "lighting:day"), ("slice", "lighting:night")]
        assert_problem(c.get(url, params=twice), 422, "query.slice")

        assert_problem(
            c.get(url, params={"perturbation": "gaussian_noise/3"}), 422, "query.perturbation"
        )
        right = with_perturbation(shim, account, "e")
        perturbed = c.get(url, params={"perturbation": "gaussian_noise/3", "correct": False,
                                       "limit": 1000}).json()  # fmt: skip
        assert [r["row_id"] for r in perturbed["rows"]] == [r for r in range(N) if not right[r]]
        both = c.get(url, params={"perturbation": "gaussian_noise/3", "slice": "lighting:night",
                                  "correct": True}).json()  # fmt: skip
        assert both["total"] == 0  # every night row is wrong under the noise
        clean = c.get(url, params={"correct": False}).json()
        assert clean["total"] == 0  # the dataset's own images: all right
        assert_problem(
            c.get(url, params={"perturbation": "gaussian_noise/4"}), 422, "query.perturbation"
        )
        assert_problem(c.get(url, params={"perturbation": "fog/1"}), 422, "query.perturbation")
