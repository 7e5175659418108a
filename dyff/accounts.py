"""Accounts and API keys. A key's secret is shown once; only its sha256 is stored.

A token reads `dyff.<account>.<key id>.<secret>`: the account and key id find
the ApiKey record directly (no scan), and the secret's hash is compared in
constant time. The secret has 256 bits of entropy, so a plain sha256 is enough
(no slow hash needed against guessing).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from dyff.errors import AlreadyExists, DyffError, NotFound
from dyff.schema import Account, AccountSpec, ApiKey, ApiKeySpec, ObjectMeta, utcnow
from dyff.stores.records import RecordStore

PREFIX = "dyff"


class Unauthorized(DyffError):
    status, title = 401, "Unauthorized"


class Forbidden(DyffError):
    status, title = 403, "Forbidden"


@dataclass(frozen=True)
class Caller:
    account: str
    key_id: str
    admin: bool


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_account(records: RecordStore, name: str, display_name: str | None = None) -> Account:
    account = Account(
        metadata=ObjectMeta(name=name, namespace=name),
        spec=AccountSpec(display_name=display_name),
    )
    return records.create(account)[0]


def mint_key(
    records: RecordStore,
    account: str,
    *,
    admin: bool = False,
    expires_in: timedelta | None = timedelta(days=90),
) -> tuple[str, ApiKey]:
    """Create a key; returns the token (shown once) and the stored record."""
    if records.find(Account, account, account) is None:
        raise NotFound(f"account {account!r} not found", field="account")
    key_id = "k" + secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    expires = utcnow() + expires_in if expires_in is not None else None
    key = ApiKey(
        metadata=ObjectMeta(name=key_id, namespace=account),
        spec=ApiKeySpec(secret_hash=hash_secret(secret), expires=expires, admin=admin),
    )
    stored, _ = records.create(key)
    return f"{PREFIX}.{account}.{key_id}.{secret}", stored


def revoke_key(records: RecordStore, account: str, key_id: str) -> ApiKey:
    def revoke(key: ApiKey) -> None:
        key.spec.revoked = True

    return records.mutate(ApiKey, account, key_id, revoke)


def authenticate(records: RecordStore, token: str, now: datetime | None = None) -> Caller:
    """The caller a bearer token stands for; Unauthorized for anything else."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise Unauthorized("malformed API key")
    _, account, key_id, secret = parts
    try:
        key = records.find(ApiKey, account, key_id)
    except DyffError:
        key = None
    # Compare even when the key is missing, so timing does not tell which part was wrong.
    expected = key.spec.secret_hash if key else "0" * 64
    if not hmac.compare_digest(expected, hash_secret(secret)) or key is None:
        raise Unauthorized("invalid API key")
    if key.spec.revoked:
        raise Unauthorized("API key revoked")
    if key.spec.expires is not None and key.spec.expires <= (now or utcnow()):
        raise Unauthorized("API key expired")
    return Caller(account=account, key_id=key_id, admin=key.spec.admin)


def bootstrap(records: RecordStore, account: str = "admin") -> str:
    """Create the first account with an admin key (no expiry); returns the token.
    Refuses when the account already exists, so it cannot hand out a second key."""
    try:
        create_account(records, account, display_name="bootstrap admin")
    except AlreadyExists:
        raise AlreadyExists(
            f"account {account!r} already exists; mint keys with an admin key instead",
            field="account",
        ) from None
    token, _ = mint_key(records, account, admin=True, expires_in=None)
    return token
