"""Configuration from the environment (`DYFF_*`), defaulting to one data directory.

Every URL is checked at start-up; a malformed one fails with a message that
names its environment variable.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dyff.errors import ConfigError

ENV_PREFIX = "DYFF_"


def parse_records_url(url: str) -> tuple[str, str, dict[str, str]]:
    """(`sqlite`, path, {}) or (`datastore`, project, {namespace, database})."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path or parts.path == "/":
            raise ValueError("expected sqlite:///ABSOLUTE/PATH")
        return "sqlite", parts.path, {}
    if parts.scheme == "datastore":
        if not parts.netloc or parts.path not in ("", "/"):
            raise ValueError("expected datastore://PROJECT[?namespace=NS&database=DB]")
        unknown = set(query) - {"namespace", "database"}
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}")
        return "datastore", parts.netloc, query
    raise ValueError("expected sqlite:///PATH or datastore://PROJECT")


def parse_blobs_url(url: str) -> tuple[str, str, str]:
    """(`file`, path, '') or (`gs`, bucket, prefix)."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError("no query or fragment allowed")
    if parts.scheme == "file":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError("expected file:///ABSOLUTE/PATH")
        return "file", parts.path, ""
    if parts.scheme == "gs":
        if not parts.netloc:
            raise ValueError("expected gs://BUCKET[/PREFIX]")
        return "gs", parts.netloc, parts.path.strip("/")
    raise ValueError("expected file:///PATH or gs://BUCKET[/PREFIX]")


class Settings(BaseSettings):
    """dyff's configuration. Each field is read from `DYFF_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    data_dir: Path = Field(
        default=Path.home() / ".local" / "share" / "dyff",
        description="Where the embedded defaults keep records and blobs.",
    )
    records_url: str | None = Field(
        default=None,
        description="sqlite:///PATH or datastore://PROJECT; default DATA_DIR/records.db.",
    )
    blobs_url: str | None = Field(
        default=None, description="file:///PATH or gs://BUCKET[/PREFIX]; default DATA_DIR/blobs."
    )

    public_url: str | None = Field(
        default=None,
        description="Base URL users reach the shim at, for upload links; default: the request's.",
    )
    upload_ttl_seconds: int = Field(
        default=3600, ge=60, le=7 * 24 * 3600, description="How long an upload URL stays valid."
    )

    drain_seconds: int = Field(
        default=8,
        ge=0,
        le=600,
        description="On SIGTERM, how long the shim lets requests in flight finish before it "
        "exits (Cloud Run and Kubernetes kill 10 s and 30 s after SIGTERM by default).",
    )

    @field_validator("records_url")
    @classmethod
    def _check_records(cls, v: str | None) -> str | None:
        if v is not None:
            parse_records_url(v)
        return v

    @field_validator("blobs_url")
    @classmethod
    def _check_blobs(cls, v: str | None) -> str | None:
        if v is not None:
            parse_blobs_url(v)
        return v

    @property
    def records(self) -> str:
        return self.records_url or f"sqlite:///{self.data_dir.resolve() / 'records.db'}"

    @property
    def blobs(self) -> str:
        return self.blobs_url or f"file://{self.data_dir.resolve() / 'blobs'}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment; raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else "DYFF_*"
            problems.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
