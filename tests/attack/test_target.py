"""The target itself: `dyff up` answers, and accounts of their own can be made."""

from __future__ import annotations

from tests.attack.conftest import Account, Up


def test_accounts_are_isolated_from_the_start(up: Up, account: Account) -> None:
    with up.client(account.key) as c:
        assert c.get("/v1/models").json()["items"] == []
    with up.client("not-a-key") as c:
        assert c.get("/v1/models").status_code == 401
