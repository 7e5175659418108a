"""Errors every layer understands; the shim maps them to problem+json statuses."""

from __future__ import annotations


class DyffError(Exception):
    """Base of dyff's errors; `str()` is a message fit for a user."""

    status = 500
    title = "Internal error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class NotFound(DyffError):
    status, title = 404, "Not found"


class AlreadyExists(DyffError):
    status, title = 409, "Already exists"


class Conflict(DyffError):
    """A write based on a stale version, or one that breaks a rule about the current state."""

    status, title = 409, "Conflict"


class Invalid(DyffError):
    """Input that fails the schema; `field` names the offending field."""

    status, title = 422, "Invalid"


class IntegrityError(DyffError):
    """Content whose declared sha256 or size does not match what arrived."""

    status, title = 422, "Integrity check failed"


class ConfigError(DyffError):
    """Bad configuration; the message names the environment variable."""


class WorkloadFailed(DyffError):
    """The input is bad (a user error): the entity fails with this reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def invalid_from_validation(exc: Exception, prefix: str = "") -> Invalid:
    """Turn a pydantic ValidationError into `Invalid` naming the first failing field."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return Invalid(str(exc))
    items = errors()
    if not items:
        return Invalid(str(exc))
    parts = []
    first_field = None
    for item in items:
        loc = ".".join(str(p) for p in item.get("loc", ()) if p != "__root__")
        loc = f"{prefix}.{loc}".strip(".") if prefix else loc
        first_field = first_field or loc or None
        msg = item.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return Invalid("; ".join(parts), field=first_field)
