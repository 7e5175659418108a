"""Paired comparisons and leaderboards over real stores, on evaluations whose rows are
constructed to differ in known ways."""

from __future__ import annotations

from typing import Any

import pytest
from scipy.stats import binomtest

from dyff.schema import Dataset
from tests import factories
from tests.shim.conftest import Shim
from tests.shim.evaluations_with_results import complete, shard_digest
from tests.shim.test_api import assert_problem, dataset_body, model_body, order, setup_pair


def named_order(name: str, dataset: str = "d") -> dict[str, Any]:
    return {"name": name, **order(dataset=dataset)}


def outcomes(both_right: int, broken: int, fixed: int, both_wrong: int) -> tuple[list, list]:
    """Row-by-row correctness of A and B with the given McNemar table, interleaved."""
    cells = (
        [(True, True)] * both_right
        + [(True, False)] * broken
        + [(False, True)] * fixed
        + [(False, False)] * both_wrong
    )
    # spread the kinds over the rows (and the shards) deterministically
    order_ = sorted(range(len(cells)), key=lambda i: (i * 7919) % len(cells))
    cells = [cells[i] for i in order_]
    return [a for a, _ in cells], [b for _, b in cells]


def test_a_constructed_comparison_gives_the_known_table_p_value_and_flips(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    a_right, b_right = outcomes(120, 12, 30, 38)
    with shim.client(token) as c:
        for name in ("ea", "eb"):
            assert c.post("/v1/evaluations", json=named_order(name)).status_code == 201
        complete(shim, account, "ea", a_right, seed=1)
        complete(shim, account, "eb", b_right, seed=2)
        r = c.get("/v1/comparisons", params={"a": "ea", "b": "eb", "seed": 7})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["rows"] == 200 and doc["commonShards"] == 2
        assert doc["a"]["name"] == "ea" and doc["b"]["name"] == "eb"
        test = doc["mcnemar"]
        assert test["table"] == [[120, 12], [30, 38]]
        assert (test["fixed"], test["broken"]) == (30, 12)
        assert test["pValue"] == pytest.approx(binomtest(30, 42, 0.5).pvalue, rel=1e-9)
        by_metric = {m["metric"]: m for m in doc["metrics"]}
        assert set(by_metric) == {
            "accuracy", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1", "ece"
        }  # fmt: skip
        acc = by_metric["accuracy"]
        assert acc["a"] == pytest.approx(132 / 200) and acc["b"] == pytest.approx(150 / 200)
        assert acc["difference"] == pytest.approx(18 / 200)
        low, high = acc["interval"]
        assert low < 18 / 200 < high and low > 0  # p ~ 0.008: the interval excludes 0
        assert by_metric["top5_accuracy"]["difference"] == 0  # top-5 always holds the label
        assert len(doc["perClass"]) == 8 and sum(p["support"] for p in doc["perClass"]) == 200
        # the same seed gives the same intervals; another seed others
        again = c.get("/v1/comparisons", params={"a": "ea", "b": "eb", "seed": 7}).json()
        assert again["metrics"] == doc["metrics"]
        other = c.get("/v1/comparisons", params={"a": "ea", "b": "eb", "seed": 8}).json()
        assert other["metrics"] != doc["metrics"]
        assert other["mcnemar"] == doc["mcnemar"]

        fixed = c.get("/v1/comparisons/rows", params={"a": "ea", "b": "eb", "kind": "fixed"})
        assert fixed.status_code == 200, fixed.text
        page = fixed.json()
        assert page["total"] == 30 and len(page["rows"]) == 30
        assert all(row["predicted_b"] == row["label"] != row["predicted_a"] for row in page["rows"])
        assert page["labels"][0] == "c0"
        broken = c.get(
            "/v1/comparisons/rows",
            params={"a": "ea", "b": "eb", "kind": "broken", "offset": 10, "limit": 5},
        ).json()
        assert broken["total"] == 12 and len(broken["rows"]) == 2
        both = c.get("/v1/comparisons/rows", params={"a": "ea", "b": "eb"}).json()
        assert both["total"] == 42
        ids = [r["row_id"] for r in both["rows"]]
        assert ids == sorted(ids)
        assert_problem(
            c.get("/v1/comparisons/rows", params={"a": "ea", "b": "eb", "kind": "other"}),
            422,
            "query.kind",
        )
        assert_problem(
            c.get("/v1/comparisons/rows", params={"a": "ea", "b": "eb", "limit": 10_001}),
            422,
            "query.limit",
        )
        assert_problem(
            c.get("/v1/comparisons", params={"a": "ea", "b": "eb", "resamples": 0}),
            422,
            "query.resamples",
        )
        assert_problem(c.get("/v1/comparisons", params={"a": "ea"}), 422, "query.b")


def test_no_common_rows_is_422_naming_both(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        assert c.post("/v1/datasets", json=dataset_body("d2", b"other")).status_code == 201
        assert c.post("/v1/evaluations", json=named_order("on-d")).status_code == 201
        assert c.post("/v1/evaluations", json=named_order("on-d2", "d2")).status_code == 201
        complete(shim, account, "on-d", [True] * 100)
        complete(shim, account, "on-d2", [True] * 100, shards=[shard_digest("elsewhere")])
        doc = assert_problem(c.get("/v1/comparisons", params={"a": "on-d", "b": "on-d2"}), 422)
        assert "'on-d'" in doc["detail"] and "'on-d2'" in doc["detail"]
        # an evaluation not Complete is a 409 saying so; one that does not exist a 404
        assert c.post("/v1/evaluations", json=named_order("pending")).status_code == 201
        assert_problem(c.get("/v1/comparisons", params={"a": "on-d", "b": "pending"}), 409)
        assert_problem(c.get("/v1/comparisons", params={"a": "on-d", "b": "nope"}), 404)


def test_datasets_sharing_some_shards_compare_their_common_rows(shim: Shim) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    with shim.client(token) as c:
        assert c.post("/v1/datasets", json=dataset_body("d2", b"other")).status_code == 201
        assert c.post("/v1/evaluations", json=named_order("x")).status_code == 201
        assert c.post("/v1/evaluations", json=named_order("y", "d2")).status_code == 201
        complete(shim, account, "x", [True] * 200)  # shards 0 and 1
        shared = [shard_digest("shard-0"), shard_digest("another")]
        complete(shim, account, "y", [False] * 200, shards=shared)
        doc = c.get("/v1/comparisons", params={"a": "x", "b": "y"}).json()
        assert doc["rows"] == 100 and doc["commonShards"] == 1
        assert doc["mcnemar"]["table"] == [[0, 100], [0, 0]]


def test_the_leaderboard_ranks_and_marks_neighbours_not_significantly_different(
    shim: Shim,
) -> None:
    account, token = shim.new_account()
    setup_pair(shim, token)
    n = 400
    best = [i % 10 != 0 for i in range(n)]  # 360 right
    close = list(best)
    for i in (1, 2):  # two rows fewer right: McNemar p = 0.5
        close[i] = False
    worse = [i % 3 != 0 for i in range(n)]  # 266 right: far below
    with shim.client(token) as c:
        for name in ("best", "close", "worse", "running"):
            assert c.post("/v1/evaluations", json=named_order(name)).status_code == 201
        complete(shim, account, "worse", worse)
        complete(shim, account, "close", close)
        complete(shim, account, "best", best)
        r = c.get("/v1/datasets/d/leaderboard", params={"metric": "accuracy", "resamples": 200})
        assert r.status_code == 200, r.text
        board = r.json()
        assert board["total"] == 3 and board["higherIsBetter"] is True
        entries = board["entries"]
        assert [e["evaluation"] for e in entries] == ["best", "close", "worse"]
        assert [e["rank"] for e in entries] == [1, 2, 3]
        assert entries[0]["value"] == pytest.approx(360 / n)
        low, high = entries[0]["interval"]
        assert low < 360 / n < high
        assert entries[0]["vsPrevious"] is None
        assert entries[1]["vsPrevious"]["significant"] is False
        assert entries[1]["vsPrevious"]["pValue"] == pytest.approx(0.5)
        assert entries[2]["vsPrevious"]["significant"] is True
        assert entries[2]["vsPrevious"]["commonRows"] == n
        assert entries[0]["modelDigest"] and entries[0]["inference"] == {"topK": 5}
        ece = c.get("/v1/datasets/d/leaderboard", params={"metric": "ece", "resamples": 100})
        assert ece.status_code == 200 and ece.json()["higherIsBetter"] is False
        assert_problem(c.get("/v1/datasets/d/leaderboard", params={"metric": "f2"}), 422)
        assert_problem(c.get("/v1/datasets/nope/leaderboard"), 404)


def test_other_accounts_evaluations_are_404_and_never_listed(shim: Shim) -> None:
    owner, owner_token = shim.new_account()
    other, other_token = shim.new_account()
    setup_pair(shim, owner_token)
    with shim.client(owner_token) as c:
        assert c.post("/v1/datasets", json=dataset_body("pub", public=True)).status_code == 201
        for name, dataset in (("p1", "d"), ("p2", "d"), ("p3", "pub")):
            assert c.post("/v1/evaluations", json=named_order(name, dataset)).status_code == 201
            complete(shim, owner, name, [True] * 100)
    with shim.client(other_token) as c:
        assert c.post("/v1/models", json=model_body("m")).status_code == 201
        cross = {"name": "mine", "spec": {"model": {"name": "m"},
                 "dataset": {"name": "pub", "account": owner}}}  # fmt: skip
        assert c.post("/v1/evaluations", json=cross).status_code == 201
        complete(shim, other, "mine", [False] * 100)
        assert_problem(c.get("/v1/comparisons", params={"a": "p1", "b": "p2"}), 404)
        assert_problem(c.get("/v1/comparisons", params={"a": "mine", "b": "p3"}), 404)
        assert_problem(c.get("/v1/comparisons/rows", params={"a": "p1", "b": "p2"}), 404)
        assert_problem(c.get("/v1/datasets/d/leaderboard", params={"account": owner}), 404)
        assert_problem(c.get("/v1/datasets/d/leaderboard"), 404)
        board = c.get("/v1/datasets/pub/leaderboard", params={"account": owner, "resamples": 50})
        assert board.status_code == 200, board.text
        assert [e["evaluation"] for e in board.json()["entries"]] == ["mine"]
    with shim.client(owner_token) as c:
        board = c.get("/v1/datasets/pub/leaderboard", params={"resamples": 50}).json()
        assert [e["evaluation"] for e in board["entries"]] == ["p3"]
        assert c.get("/v1/comparisons", params={"a": "p1", "b": "p2"}).status_code == 200
    assert shim.records.find(Dataset, owner, "pub") is not None


def test_the_comparison_report_shows_thumbnails_of_flipped_rows(shim: Shim) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from dyff import layout
    from dyff.schema import Shard

    account, token = shim.new_account()
    setup_pair(shim, token)
    shards = [shard_digest("shard-0"), shard_digest("shard-1")]
    for i, digest in enumerate(shards):
        images = []
        for rid in range(i * 100, (i + 1) * 100):
            buf = io.BytesIO()
            Image.new("L", (8, 8), color=rid % 256).save(buf, format="PNG")
            images.append(buf.getvalue())
        table = pa.table({"row_id": pa.array(range(i * 100, (i + 1) * 100), pa.int64()),
                          "image": pa.array(images, pa.binary())})  # fmt: skip
        out = io.BytesIO()
        pq.write_table(table, out)
        shim.blobs.put(layout.shard_key(account, digest), out.getvalue())

    def ready(d: Dataset) -> None:
        d.status.phase = "Ready"
        listed = [Shard(sha256=s, rows=100, first_row=100 * i) for i, s in enumerate(shards)]
        factories.list_shards(shim.blobs, d, listed)

    shim.records.mutate(Dataset, account, "d", ready)
    a_right, b_right = outcomes(150, 5, 10, 35)
    with shim.client(token) as c:
        for name in ("ra", "rb"):
            assert c.post("/v1/evaluations", json=named_order(name)).status_code == 201
        complete(shim, account, "ra", a_right)
        complete(shim, account, "rb", b_right)
        r = c.get("/v1/comparisons/report", params={"a": "ra", "b": "rb"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/html")
        assert "script-src" not in r.headers["content-security-policy"]
        html = r.text
        assert "<script" not in html and html.count('class="flip-thumb"') == 15
        assert "data:image/png;base64," in html


def test_a_comparison_per_slice_of_a_dataset_attribute(shim: Shim) -> None:
    """`by=lighting`: B fixed every night row A got wrong and nothing else changed, so the
    night slice shows the whole difference (interval above 0, McNemar small) and the day
    slice none; a column the dataset lacks, or a dataset without attributes, is a 422."""
    import hashlib
    import io

    import polars as pl

    from dyff import layout
    from dyff.schema import Shard
    from tests.shim.evaluations_with_results import SHARD_ROWS

    account, token = shim.new_account()
    setup_pair(shim, token)
    n = 2 * SHARD_ROWS
    night = [i % 4 == 0 for i in range(n)]
    a_right = [not x for x in night]  # A is wrong on every night row
    b_right = [True] * n
    with shim.client(token) as c:
        for name in ("sa", "sb"):
            assert c.post("/v1/evaluations", json=named_order(name)).status_code == 201
        complete(shim, account, "sa", a_right, seed=1)
        complete(shim, account, "sb", b_right, seed=2)
        refused = c.get("/v1/comparisons", params={"a": "sa", "b": "sb", "by": "lighting"})
        assert_problem(refused, 422, "by")  # no attribute files yet

        shards = [shard_digest(f"shard-{i}") for i in range(2)]
        listed = []
        for i, shard in enumerate(shards):
            ids = list(range(i * SHARD_ROWS, (i + 1) * SHARD_ROWS))
            frame = pl.DataFrame(
                {"row_id": ids, "lighting": ["night" if night[r] else "day" for r in ids]}
            )
            buf = io.BytesIO()
            frame.write_parquet(buf)
            data = buf.getvalue()
            attrs = hashlib.sha256(data).hexdigest()
            shim.blobs.put(layout.attributes_key(account, shard, attrs), data)
            listed.append(Shard(sha256=shard, rows=SHARD_ROWS, first_row=ids[0], attributes=attrs))

        def with_shards(d: Dataset) -> None:
            factories.list_shards(shim.blobs, d, listed)
            d.status.attributes = ["lighting"]

        shim.records.mutate(Dataset, account, "d", with_shards)
        r = c.get("/v1/comparisons", params={"a": "sa", "b": "sb", "by": "lighting"})
        assert r.status_code == 200, r.text
        by_key = {v["key"]["lighting"]: v for v in r.json()["slices"]["values"]}
        assert set(by_key) == {"day", "night"}
        assert by_key["night"]["rows"] == sum(night)
        assert (by_key["night"]["a"], by_key["night"]["b"]) == (0.0, 1.0)
        assert by_key["night"]["interval"][0] > 0 and by_key["night"]["mcnemarP"] < 1e-6
        assert by_key["day"]["difference"] == 0 and by_key["day"]["mcnemarP"] == 1.0
        missing = c.get("/v1/comparisons", params={"a": "sa", "b": "sb", "by": "weather"})
        assert_problem(missing, 422, "by")
