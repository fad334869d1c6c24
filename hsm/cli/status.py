"""``hsm status``: every member of the config, reachable or not, described one by one.

Each member is connected to on its own (:func:`hsm.client.member_status`), so one member
with a wrong PIN or a missing token is reported without hiding the others. Exit status 0
when any member is reachable (the cluster fails over around the others); 1 when none is,
after the report has been printed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from hsm.cli._common import CLIError, common_options, emit, load, stdout_is_terminal
from hsm.client import MemberStatus, member_status

__all__ = ["status"]


def _mechanisms(mechanisms: Mapping[str, Any]) -> str:
    """``{"aes_gcm": True, "gcm_iv": "caller", "x": False}`` -> ``aes_gcm, gcm_iv=caller``."""
    parts = []
    for name, value in mechanisms.items():
        if value is True:
            parts.append(name)
        elif value not in (False, None, ""):
            parts.append(f"{name}={value}")
    return ", ".join(parts) or "none"


def _token(s: MemberStatus) -> str:
    return f"{s.token_label or '?'} (serial {s.token_serial or '?'})"


def _print_lines(statuses: Sequence[MemberStatus]) -> None:
    for s in statuses:
        if not s.reachable:
            click.echo(f"{s.name}: unreachable: {s.error}")
            click.echo(f"  module:     {s.module}")
            continue
        click.echo(f"{s.name}: reachable")
        click.echo(f"  module:     {s.module}")
        click.echo(f"  token:      {_token(s)}")
        click.echo(f"  os locking: {'yes' if s.os_locking else 'no'}")
        click.echo(f"  mechanisms: {_mechanisms(s.mechanisms)}")
        click.echo(f"  keys:       {s.keys}")


def _print_table(statuses: Sequence[MemberStatus]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="HSM members")
    for column in ("member", "state", "token", "os locking", "keys", "mechanisms"):
        table.add_column(column)
    table.add_column("module", overflow="fold")
    for s in statuses:
        if s.reachable:
            table.add_row(s.name, "[green]reachable[/]", _token(s),
                          "yes" if s.os_locking else "no", str(s.keys),
                          _mechanisms(s.mechanisms), s.module)
        else:
            table.add_row(s.name, f"[red]unreachable[/]: {s.error}", "", "", "", "", s.module)
    Console(highlight=False).print(table)


@click.command()
@common_options
def status() -> None:
    """Describe every member: token, reachability, OS locking, mechanisms, key count.

    Exit status 1 only when no member is reachable: the cluster fails over around the rest.
    A long-running process sees live health, counters and failovers in client.status() and
    in its Prometheus metrics (client.metrics.registry).
    """
    config = load()
    statuses = [member_status(member) for member in config.members]
    emit({"members": [s.as_dict() for s in statuses]},
         lambda: (_print_table if stdout_is_terminal() else _print_lines)(statuses))
    if not any(s.reachable for s in statuses):
        raise CLIError(f"no member is reachable ({statuses[0].name}: {statuses[0].error})")
