"""``hsm status``: every member of the config, reachable or not, with its state and why.

The members are opened the way every command opens them (:func:`hsm.cli._common.open_client`:
all at once, each under the cluster's deadline), so a hung member costs one deadline, not
the command, and a member whose PIN is refused is logged in to once, never again. Exit
status 0 when any member is reachable (the cluster fails over around the others); when none
opens, one line names every member and why, and the exit status is 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click

from hsm.cli._common import common_options, emit, open_client, stdout_is_terminal
from hsm.client import MemberStatus

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
            click.echo(f"{s.name}: {s.state or 'unreachable'}: {s.error}")
            click.echo(f"  module:     {s.module}")
            continue
        click.echo(f"{s.name}: {s.state or 'reachable'}")
        click.echo(f"  module:     {s.module}")
        click.echo(f"  token:      {_token(s)}")
        click.echo(f"  os locking: {'yes' if s.os_locking else 'no'}")
        click.echo(f"  mechanisms: {_mechanisms(s.mechanisms)}")
        click.echo(f"  keys:       {s.keys}")
        if s.pending:
            click.echo(f"  pending:    {s.pending} (run hsm cluster resync {s.name})")


def _print_table(statuses: Sequence[MemberStatus]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="HSM members")
    for column in ("member", "state", "token", "os locking", "keys", "mechanisms"):
        table.add_column(column)
    table.add_column("module", overflow="fold")
    for s in statuses:
        if s.reachable:
            table.add_row(s.name, f"[green]{s.state or 'reachable'}[/]", _token(s),
                          "yes" if s.os_locking else "no", str(s.keys),
                          _mechanisms(s.mechanisms), s.module)
        else:
            table.add_row(s.name, f"[red]{s.error}[/]", "", "", "", "", s.module)
    Console(highlight=False).print(table)


@click.command()
@common_options
def status() -> None:
    """Describe every member: state, token, OS locking, mechanisms, key count.

    Exit status 1 only when no member opens: the cluster fails over around the rest. A
    long-running process sees live health, counters and failovers in client.status() and
    in its Prometheus metrics (client.metrics.registry).
    """
    with open_client() as client:
        statuses = client.status()
    emit({"members": [s.as_dict() for s in statuses]},
         lambda: (_print_table if stdout_is_terminal() else _print_lines)(statuses))
