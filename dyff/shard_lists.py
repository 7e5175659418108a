"""A Dataset's shard list lives in a blob, not in its status.

The list grows with the dataset (one entry per shard), and a status is copied into
the record and the CR, where etcd refuses objects over 1.5 MiB. So ingestion stores
the list as JSON under `layout.shard_list_key`, named by its sha256, and the status
holds only that digest and the count (`schema.ShardList`), beside the row total.
Being content-addressed, a list never changes under its name: reads are checked
against the digest and cached.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence

from pydantic import TypeAdapter

from dyff import layout
from dyff.errors import NotFound
from dyff.schema import Dataset, Shard, ShardList
from dyff.stores.blobs import BlobStore

_SHARDS = TypeAdapter(list[Shard])
_CACHED_LISTS = 64  # lists, whatever their length: a process reads few datasets
_cache: OrderedDict[tuple[str, str], tuple[Shard, ...]] = OrderedDict()
_lock = threading.Lock()


def encode(shards: Sequence[Shard]) -> bytes:
    """The list's bytes: one canonical JSON document, so equal lists share a digest."""
    doc = {"shards": [s.wire() for s in shards]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def store(blobs: BlobStore, account: str, shards: Sequence[Shard]) -> tuple[ShardList, bool]:
    """Store the list (unless stored already); returns its reference for the status and
    whether this call wrote it."""
    data = encode(shards)
    sha = hashlib.sha256(data).hexdigest()
    key = layout.shard_list_key(account, sha)
    wrote = blobs.stat(key) is None
    if wrote:
        blobs.put(key, data, sha256=sha)
    return ShardList(sha256=sha, count=len(shards)), wrote


def load(blobs: BlobStore, account: str, ref: ShardList) -> list[Shard]:
    """The shards of a stored list, in dataset order. NotFound if its blob is gone;
    ValueError if its bytes are not the ones its digest names."""
    cache_key = (account, ref.sha256)
    with _lock:
        cached = _cache.get(cache_key)
        if cached is not None:
            _cache.move_to_end(cache_key)
            return list(cached)
    data = blobs.get(layout.shard_list_key(account, ref.sha256))
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ValueError(f"shard list {ref.sha256} does not match its digest")
    shards = tuple(_SHARDS.validate_python(json.loads(data)["shards"]))
    with _lock:
        _cache[cache_key] = shards
        while len(_cache) > _CACHED_LISTS:
            _cache.popitem(last=False)
    return list(shards)


def shards_of(blobs: BlobStore, dataset: Dataset) -> list[Shard]:
    """The dataset's shards, in order ([] before it is ingested). NotFound if its list's
    blob is gone."""
    ref = dataset.status.shard_list
    return [] if ref is None else load(blobs, dataset.account, ref)


def listed_shards(blobs: BlobStore, datasets: Sequence[Dataset]) -> list[Shard]:
    """Every shard the datasets list, for cleanup and fsck: a list whose blob is gone
    lists nothing (there is nothing left to keep for it)."""
    out: list[Shard] = []
    for dataset in datasets:
        try:
            out.extend(shards_of(blobs, dataset))
        except NotFound:
            continue
    return out
