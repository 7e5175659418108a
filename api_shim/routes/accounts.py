"""Accounts (admin keys only) and the caller's API keys."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter
from pydantic import Field

from api_shim.auth import CallerDep
from api_shim.params import NameStr
from api_shim.problems import responses
from api_shim.state import StateDep
from dyff import accounts
from dyff.accounts import Forbidden
from dyff.errors import Conflict
from dyff.schema import ApiKey, Schema, utcnow

router = APIRouter(tags=["accounts"])


class AccountCreate(Schema):
    name: NameStr = Field(description="Account name; also its namespace.")
    display_name: str | None = Field(default=None, max_length=256, description="Human name.")


class KeyCreate(Schema):
    expires_in_days: int | None = Field(
        default=90, ge=1, le=3650, description="Days until the key expires; null for never."
    )


class KeyInfo(Schema):
    id: str = Field(description="Key id.")
    account: str = Field(description="Owning account.")
    admin: bool = Field(description="May manage accounts.")
    expires: str | None = Field(default=None, description="Expiry (RFC 3339).")
    revoked: bool = Field(description="Revoked keys never work again.")


class KeyCreated(Schema):
    token: str = Field(description="The bearer token; shown once, never stored.")
    key: KeyInfo = Field(description="The stored key.")


def _key_info(key: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=key.name,
        account=key.account,
        admin=key.spec.admin,
        expires=key.spec.expires.isoformat() if key.spec.expires else None,
        revoked=key.spec.revoked,
    )


@router.post(
    "/v1/accounts",
    status_code=201,
    response_model=KeyCreated,
    responses=responses(401, 403, 409, 422),
)
def create_account(body: AccountCreate, who: CallerDep, state: StateDep) -> KeyCreated:
    """Create an account and its first key (admin keys only)."""
    if not who.admin:
        raise Forbidden("only admin keys may create accounts")
    accounts.create_account(state.records, body.name, body.display_name)
    token, key = accounts.mint_key(state.records, body.name)
    return KeyCreated(token=token, key=_key_info(key))


class AccountDeleted(Schema):
    name: str = Field(description="The account.")
    keys_revoked: int = Field(description="Keys that were still live, now revoked.")
    entities_deleting: int = Field(description="Models, datasets, evaluations now deleting.")
    finished: bool = Field(
        description="The account's records are gone; otherwise the controller removes "
        "them once its entities are deleted."
    )


@router.delete(
    "/v1/accounts/{name}",
    status_code=202,
    response_model=AccountDeleted,
    responses=responses(401, 403, 404, 409, 422),
)
def delete_account(name: NameStr, who: CallerDep, state: StateDep) -> AccountDeleted:
    """Delete an account (admin keys only): its keys stop working at once, its models,
    datasets and evaluations are deleted (the controller stops their work and deletes
    their bytes), and the account's records go after the last of them."""
    if not who.admin:
        raise Forbidden("only admin keys may delete accounts")
    if name == who.account:
        raise Conflict("an account cannot delete itself with its own key", field="name")
    state.authenticator.forget(name)
    done = accounts.delete_account(state.records, name)
    state.authenticator.forget(name)  # anything cached while it ran
    return AccountDeleted(
        name=name,
        keys_revoked=done.keys_revoked,
        entities_deleting=done.entities_deleting,
        finished=done.finished,
    )


@router.post(
    "/v1/keys", status_code=201, response_model=KeyCreated, responses=responses(401, 403, 422)
)
def create_key(body: KeyCreate, who: CallerDep, state: StateDep) -> KeyCreated:
    """Mint another key for the caller's account. It expires no later than the caller's
    own key; a key that never expires only from an admin key."""
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    if not who.admin:
        if expires is None:
            raise Forbidden(
                "only admin keys may mint keys that never expire", field="expiresInDays"
            )
        if who.expires is not None:
            expires = min(expires, who.expires - utcnow())
    token, key = accounts.mint_key(state.records, who.account, expires_in=expires)
    return KeyCreated(token=token, key=_key_info(key))


@router.get("/v1/keys", response_model=list[KeyInfo], responses=responses(401))
def list_keys(who: CallerDep, state: StateDep) -> list[KeyInfo]:
    return [_key_info(k) for k in state.records.list_all(ApiKey, who.account)]


@router.delete("/v1/keys/{key_id}", response_model=KeyInfo, responses=responses(401, 404, 422))
def revoke_key(key_id: NameStr, who: CallerDep, state: StateDep) -> KeyInfo:
    revoked = accounts.revoke_key(state.records, who.account, key_id)
    state.authenticator.forget(who.account, key_id)
    return _key_info(revoked)
