"""Accounts and API keys. A key's secret is shown once; only its sha256 is stored.

A token reads `dyff.<account>.<key id>.<secret>`: the account and key id find
the ApiKey record directly (no scan), and the secret's hash is compared in
constant time. The secret has 256 bits of entropy, so a plain sha256 is enough
(no slow hash needed against guessing).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from dyff.errors import AlreadyExists, DyffError, NotFound
from dyff.schema import (
    RESOURCE_TYPES,
    Account,
    AccountSpec,
    ApiKey,
    ApiKeySpec,
    IdempotencyRecord,
    ObjectMeta,
    UploadTicket,
    utcnow,
)
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
    expires: datetime | None = None


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


def revoke_all_keys(records: RecordStore, account: str) -> list[ApiKey]:
    """Revoke every key of an account; returns those that were still live."""
    revoked = []
    for key in records.list_all(ApiKey, account):
        if not key.spec.revoked:
            revoked.append(revoke_key(records, account, key.name))
    return revoked


@dataclass(frozen=True)
class AccountDeletion:
    keys_revoked: int
    entities_deleting: int
    finished: bool  # the account's records are gone


def delete_account(records: RecordStore, name: str) -> AccountDeletion:
    """Delete an account: mark it deleting (its keys stop at once: `authenticate` refuses
    any key of a deleted account), revoke its keys, and mark each of its models, datasets
    and evaluations deleting, so the controller stops their work and deletes their bytes.
    When it holds nothing the account's records go now; otherwise the controller's
    `finish_account_deletion`, run as each entity is released, removes them after the
    last. Deleting again marks anything that was created meanwhile."""
    records.mark_deleting(Account, name, name)  # NotFound for an unknown account
    keys = revoke_all_keys(records, name)
    marked = 0
    for kind in RESOURCE_TYPES:
        for entity in records.list_all(kind, name):
            if entity.metadata.deletion_timestamp is None:
                records.mark_deleting(kind, name, entity.name)
                marked += 1
    return AccountDeletion(len(keys), marked, finish_account_deletion(records, name))


def finish_account_deletion(records: RecordStore, name: str) -> bool:
    """Remove a deleted account's records (keys, tickets, idempotency records, the
    account) once it holds no model, dataset or evaluation; True when it is gone. Does
    nothing to an account not marked deleting."""
    account = records.find(Account, name, name)
    if account is None:
        return True
    if account.metadata.deletion_timestamp is None:
        return False
    if any(records.list(kind, name, limit=1).items for kind in RESOURCE_TYPES):
        return False
    for kind in (ApiKey, UploadTicket, IdempotencyRecord):
        for record in records.list_all(kind, name):
            with contextlib.suppress(NotFound):
                records.delete(kind, name, record.name)
    with contextlib.suppress(NotFound):
        records.delete(Account, name, name)
    return True


def authenticate(records: RecordStore, token: str, now: datetime | None = None) -> Caller:
    """The caller a bearer token stands for; Unauthorized for anything else."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise Unauthorized("malformed API key")
    _, account, key_id, secret = parts
    try:  # the key and its account in one round trip
        found, owner = records.find_many([(ApiKey, account, key_id), (Account, account, account)])
    except DyffError:
        found = owner = None
    key = found if isinstance(found, ApiKey) else None
    # Compare even when the key is missing, so timing does not tell which part was wrong.
    expected = key.spec.secret_hash if key else "0" * 64
    if not hmac.compare_digest(expected, hash_secret(secret)) or key is None:
        raise Unauthorized("invalid API key")
    if key.spec.revoked:
        raise Unauthorized("API key revoked")
    if owner is None or owner.metadata.deletion_timestamp is not None:
        raise Unauthorized("the API key's account is deleted")
    if key.spec.expires is not None and key.spec.expires <= (now or utcnow()):
        raise Unauthorized("API key expired")
    return Caller(account=account, key_id=key_id, admin=key.spec.admin, expires=key.spec.expires)


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


class Authenticator:
    """`authenticate` with a short in-process cache, so a busy client costs one record
    read per `ttl` seconds instead of one per request. A key revoked through this
    process stops at once; revoked elsewhere, it stops within `ttl`. Expiry is checked
    on every request."""

    MAX_ENTRIES = 10_000

    def __init__(self, records: RecordStore, ttl: float = 5.0) -> None:
        self.records = records
        self.ttl = ttl
        self._cache: dict[str, tuple[Caller, float]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str) -> Caller | None:
        """The caller if this token was checked within `ttl` and has not expired."""
        with self._lock:
            hit = self._cache.get(hash_secret(token))  # the cache never holds a secret
        if hit is None or hit[1] <= time.monotonic():
            return None
        caller = hit[0]
        return caller if caller.expires is None or caller.expires > utcnow() else None

    def __call__(self, token: str) -> Caller:
        caller = self.cached(token)
        if caller is not None:
            return caller
        digest, now = hash_secret(token), time.monotonic()
        caller = authenticate(self.records, token)
        if self.ttl > 0:
            with self._lock:
                if len(self._cache) >= self.MAX_ENTRIES:
                    self._cache.clear()
                self._cache[digest] = (caller, now + self.ttl)
        return caller

    def forget(self, account: str, key_id: str | None = None) -> None:
        """Drop the cached callers of one key, or of every key of the account."""
        with self._lock:
            for digest, (caller, _) in list(self._cache.items()):
                if caller.account == account and key_id in (None, caller.key_id):
                    del self._cache[digest]
