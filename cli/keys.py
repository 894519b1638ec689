"""API key commands: `keys create|bootstrap|revoke|training|list`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cli.errors import reports_errors
from cli.output import console

keys_app = typer.Typer(help="API keys: create, revoke, list, training opt-out.", no_args_is_help=True)


@keys_app.command("create")
@reports_errors()
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key (erasure and audit go by this name).")],
    role: Annotated[str, typer.Option("--role", help="reader, curator or admin.")],
    collections: Annotated[str, typer.Option("--collections", help="Comma-separated collection names, or '*' for all.")],
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from citeloop.keys import create_key

    console.print(create_key(name, role, collections.split(",")), markup=False, highlight=False)


@keys_app.command("bootstrap")
def keys_bootstrap() -> None:
    """Create a first admin key (all collections) when no admin key exists, and print it once."""
    from citeloop.keys import create_key, has_admin_key, list_keys

    if has_admin_key():
        console.print("an admin key exists already (`citeloop keys list`)")
        return
    taken = {k.name for k in list_keys()}
    name, n = "admin", 1
    while name in taken:  # an earlier admin key was revoked; keep its name for the audit trail
        n += 1
        name = f"admin-{n}"
    key = create_key(name, "admin", ["*"])
    console.print(f"created admin key '{name}' (shown only now; keep it):\n{key}", markup=False, highlight=False)


@keys_app.command("revoke")
@reports_errors()
def keys_revoke(name: Annotated[str, typer.Argument(help="The key's name.")]) -> None:
    """Revoke a key: every later request with it answers 401."""
    from citeloop.keys import revoke_key

    revoke_key(name)
    console.print(f"revoked '{name}'")


@keys_app.command("training")
@reports_errors()
def keys_training(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    opt_out: Annotated[bool, typer.Option("--opt-out/--opt-in", help="Keep the key's feedback out of training sets, or let it back in.")],
) -> None:
    """Whether a key's votes and judgements may train models (its events are stored and exported either way)."""
    from citeloop.keys import set_key_training_opt_out

    set_key_training_opt_out(name, opt_out)
    console.print(f"'{name}': feedback {'kept out of' if opt_out else 'used in'} training sets")


@keys_app.command("list")
def keys_list() -> None:
    """Keys with their role, collections and state (never the key itself)."""
    from citeloop.keys import list_keys

    table = Table("name", "role", "collections", "prefix", "created", "revoked", "training")
    for k in list_keys():
        table.add_row(
            k.name, k.role, ",".join(k.collections), k.prefix + "…", f"{k.created_at:%Y-%m-%d %H:%M}",
            f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "-", "opted out" if k.training_opt_out else "used",
        )
    console.print(table)
