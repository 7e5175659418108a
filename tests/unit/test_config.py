"""Configuration: defaults under one data directory; a malformed URL names its variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from dyff.config import load_settings
from dyff.errors import ConfigError
from dyff.stores import open_blobs, open_records
from dyff.stores.file import FileBlobStore
from dyff.stores.sqlite import SqliteRecordStore


def test_defaults_live_under_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DYFF_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DYFF_RECORDS_URL", raising=False)
    monkeypatch.delenv("DYFF_BLOBS_URL", raising=False)
    settings = load_settings()
    assert settings.records == f"sqlite:///{tmp_path}/records.db"
    assert settings.blobs == f"file://{tmp_path}/blobs"
    assert isinstance(open_records(settings.records), SqliteRecordStore)
    assert isinstance(open_blobs(settings.blobs), FileBlobStore)
    assert (tmp_path / "records.db").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DYFF_RECORDS_URL", "postgres://db/x"),
        ("DYFF_RECORDS_URL", "sqlite://relative.db"),
        ("DYFF_RECORDS_URL", "datastore://"),
        ("DYFF_RECORDS_URL", "datastore://proj?colour=blue"),
        ("DYFF_BLOBS_URL", "s3://bucket"),
        ("DYFF_BLOBS_URL", "gs:///no-bucket"),
        ("DYFF_BLOBS_URL", "file://relative/path"),
    ],
)
def test_malformed_url_fails_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert variable in str(exc.value)


def test_accepted_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYFF_RECORDS_URL", "datastore://my-project?namespace=prod")
    monkeypatch.setenv("DYFF_BLOBS_URL", "gs://my-bucket/dyff")
    settings = load_settings()
    assert settings.records == "datastore://my-project?namespace=prod"
    assert settings.blobs == "gs://my-bucket/dyff"
