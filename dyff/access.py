"""Who may see and use an entity: the one access rule, for the shim, the controller and the
workloads alike."""

from __future__ import annotations

from dyff.schema import Entity


def usable(entity: Entity | None, account: str) -> bool:
    """An entity exists for `account` if it is the account's own, or public (then it may be
    read and used in evaluations, never changed). Anything else answers as not found."""
    if entity is None:
        return False
    return entity.account == account or bool(getattr(entity.spec, "public", False))
