"""Record and blob stores, opened by URL."""

from __future__ import annotations

from dyff.config import parse_blobs_url, parse_records_url
from dyff.stores.blobs import BlobStore
from dyff.stores.records import RecordStore


def open_records(url: str) -> RecordStore:
    scheme, where, params = parse_records_url(url)
    if scheme == "sqlite":
        from dyff.stores.sqlite import SqliteRecordStore

        return SqliteRecordStore(where)
    from dyff.stores.datastore import DatastoreRecordStore

    return DatastoreRecordStore(
        where, namespace=params.get("namespace"), database=params.get("database")
    )


def open_blobs(url: str) -> BlobStore:
    scheme, where, prefix = parse_blobs_url(url)
    if scheme == "file":
        from dyff.stores.file import FileBlobStore

        return FileBlobStore(where)
    from dyff.stores.gcs import GcsBlobStore

    return GcsBlobStore(where, prefix=prefix)


__all__ = ["BlobStore", "RecordStore", "open_blobs", "open_records"]
