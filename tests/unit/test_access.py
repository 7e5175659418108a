"""The one access rule (`dyff.access.usable`): an account's own entities and public ones."""

from __future__ import annotations

from dyff.access import usable
from tests import factories


def test_an_account_uses_its_own_entities() -> None:
    assert usable(factories.model(account="acme"), "acme")
    assert usable(factories.evaluation(account="acme"), "acme")


def test_another_accounts_private_entity_is_not_usable() -> None:
    assert not usable(factories.model(account="other"), "acme")
    assert not usable(factories.dataset(account="other"), "acme")


def test_another_accounts_public_entity_is_usable() -> None:
    model = factories.model(account="other")
    model.spec.public = True
    assert usable(model, "acme")


def test_a_missing_entity_is_not_usable() -> None:
    assert not usable(None, "acme")
