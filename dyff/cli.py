"""The `dyff` command line."""

from __future__ import annotations

import sys

import typer

from dyff.config import load_settings
from dyff.errors import DyffError

app = typer.Typer(no_args_is_help=True, help="dyff: evaluate AI models.")
admin = typer.Typer(no_args_is_help=True, help="Administration against the stores directly.")
app.add_typer(admin, name="admin")


@admin.command("bootstrap")
def bootstrap(
    account: str = typer.Option("admin", help="Name of the first (admin) account."),
) -> None:
    """Create the first account and an admin API key; prints the key (shown once)."""
    from dyff import accounts
    from dyff.stores import open_records

    records = open_records(load_settings().records)
    try:
        token = accounts.bootstrap(records, account)
    finally:
        records.close()
    typer.echo(token)


def main() -> None:
    try:
        app()
    except DyffError as exc:
        typer.echo(f"dyff: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
