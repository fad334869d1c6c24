"""``hsm cluster init``: the security officers' ceremony for key replication.

``hsm.cluster.ceremony`` is imported inside the command: the rest of the CLI never needs it.
"""

from __future__ import annotations

import click

from hsm.cli._common import CLIError, common_options, emit, load, open_client

__all__ = ["cluster"]


@click.group()
@common_options
def cluster() -> None:
    """The HSM cluster: the members of the config, served as one."""


@cluster.command("init")
@common_options
def init() -> None:
    """Establish the trusted cluster wrapping key on every member (security officer).

    Logs in as each member's security officer (its so_pin), then creates the same AES-256
    wrapping key, marked CKA_TRUSTED, on every member that lacks it. Replicable master keys
    move between members only wrapped under it. All or nothing; a member that already holds
    the same key is left as it is; one that holds another is named and nothing changes.
    Run it before any client uses the members. See docs/CLUSTER-KEYS.md.
    """
    from hsm.cluster.ceremony import init_cluster

    report = init_cluster(load())

    def human() -> None:
        width = max(len(m.name) for m in report.members)
        for m in report.members:
            state = "created" if m.created else "already present"
            click.echo(f"{m.name:<{width}}  kcv {m.kcv}  {state}")
        click.echo(f"cluster wrapping key kcv {report.kcv} on {len(report.members)} member(s)")

    emit(report.as_dict(), human)


@cluster.command("verify")
@common_options
def verify() -> None:
    """Check that every key and version is on every member with the same KCV.

    Drift is reported member by member (missing keys, keys whose KCV differs, members that
    can't be reached); exit status 1 if there is any.
    """
    with open_client() as client:
        report = client.verify()

    def human() -> None:
        click.echo(f"{report.keys} key version(s) across {len(report.members)} member(s)")
        for member in report.members:
            if not member.reachable:
                click.echo(f"  {member.name}: UNREACHABLE ({member.error})")
                continue
            state = "ok" if not member.missing and not member.mismatched else "DRIFT"
            click.echo(f"  {member.name}: {state}, {member.keys} key(s)")
            for key_id, version in member.missing:
                click.echo(f"    missing    {key_id} v{version}")
            for key_id, version in member.mismatched:
                click.echo(f"    other KCV  {key_id} v{version}")
        click.echo("all members agree" if report.ok else "members disagree")

    emit(report.as_dict(), human)
    if not report.ok:
        drifted = [m.name for m in report.members
                   if not m.reachable or m.missing or m.mismatched]
        raise CLIError(f"cluster drift on {', '.join(drifted)}")
