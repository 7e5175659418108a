"""Where things live in the blob store. Everything is under the owning account's
prefix, and what can be reused is named by content (sha256)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def account_prefix(account: str) -> str:
    return f"accounts/{account}"


def upload_key(account: str, kind: str, name: str, sha256: str) -> str:
    """An uploaded archive or file, before ingestion."""
    return f"{account_prefix(account)}/uploads/{kind.lower()}s/{name}/{sha256}"


def bento_key(account: str, digest: str) -> str:
    """A packaged model (a `bentoml export` archive) named by its digest."""
    return f"{account_prefix(account)}/bentos/{digest}.bento"


def shard_key(account: str, sha256: str) -> str:
    """A dataset shard (Parquet) named by the sha256 of its bytes."""
    return f"{account_prefix(account)}/shards/{sha256}.parquet"


def shard_list_key(account: str, sha256: str) -> str:
    """A dataset's shard list (JSON, `dyff.shard_lists`) named by the sha256 of its bytes."""
    return f"{account_prefix(account)}/shard-lists/{sha256}.json"


def attributes_prefix(account: str, shard_sha256: str) -> str:
    """Every attribute file of one shard (one per distinct set of attributes given it)."""
    return f"{account_prefix(account)}/attributes/{shard_sha256}"


def attributes_key(account: str, shard_sha256: str, attributes_sha256: str) -> str:
    """A shard's attribute file (Parquet, `dyff.datasets`): per-row attributes for slicing,
    named by the shard's digest and its own, so the shard's bytes never change and two
    datasets with the same shard but other metadata each keep theirs."""
    return f"{attributes_prefix(account, shard_sha256)}/{attributes_sha256}.parquet"


def config_digest(config: dict[str, Any]) -> str:
    """A stable digest of a JSON-able configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def prediction_key(account: str, model_digest: str, inference_digest: str, shard: str) -> str:
    """Cached predictions of one shard: (model digest, inference config, shard digest)."""
    return (
        f"{account_prefix(account)}/predictions/{model_digest}/{inference_digest}/{shard}.parquet"
    )


def evaluation_prefix(account: str, name: str, uid: str) -> str:
    """An evaluation's own results (metrics.json, the list of its prediction shards)."""
    return f"{account_prefix(account)}/evaluations/{name}/{uid}"


def metrics_key(account: str, name: str, uid: str) -> str:
    """The full metrics of an evaluation (JSON)."""
    return f"{evaluation_prefix(account, name, uid)}/metrics.json"


def manifest_key(account: str, name: str, uid: str) -> str:
    """The prediction files of an evaluation, in shard order: `{"files": [key, ...]}`,
    and with perturbations `"perturbed": [{"kind", "severity", "seed", "files"}, ...]`
    (`manifest_files` reads them all)."""
    return f"{evaluation_prefix(account, name, uid)}/predictions.json"


def manifest_files(doc: dict[str, Any]) -> set[str]:
    """Every prediction file a manifest lists (for cleanup and fsck: all are in use)."""
    files = {str(k) for k in doc.get("files") or []}
    for part in doc.get("perturbed") or []:
        files.update(str(k) for k in part.get("files") or [])
    return files
