"""Who is calling (bearer API keys) and what they may see: their own account's entities and
public ones (`dyff.access.usable`); anything else answers 404, so existence does not leak."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api_shim.state import StateDep
from dyff.access import usable
from dyff.accounts import Caller, Unauthorized
from dyff.errors import NotFound
from dyff.schema import Entity
from dyff.stores.records import RecordStore

E = TypeVar("E", bound=Entity)

_bearer = HTTPBearer(auto_error=False)


async def current_caller(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None:
        raise Unauthorized("missing bearer token")
    authenticator = state.authenticator
    # A cache hit needs no I/O, so it stays on the event loop; a miss reads a record.
    caller = authenticator.cached(credentials.credentials)
    if caller is None:
        caller = await run_in_threadpool(authenticator, credentials.credentials)
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]


@dataclass(frozen=True)
class AccountScope:
    """The records as the caller may see them."""

    caller: Caller
    records: RecordStore

    @property
    def account(self) -> str:
        return self.caller.account

    def readable(self, kind: type[E], name: str, account: str | None = None) -> E:
        """The entity if the caller may read it; 404 otherwise."""
        entity = self.records.find(kind, account or self.account, name)
        if entity is None or not usable(entity, self.account):
            raise NotFound(f"{kind.kind_name} {name!r} not found")
        return entity


async def account_scope(who: CallerDep, state: StateDep) -> AccountScope:
    return AccountScope(who, state.records)


ScopeDep = Annotated[AccountScope, Depends(account_scope)]
