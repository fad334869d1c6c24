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

    Drift is reported member by member: missing keys (copy them with hsm cluster resync),
    keys whose KCV differs, orphans (held by fewer members than the quorum: no caller
    received them), keys weaker than the master-key template, members that can't be
    reached. Exit status 1 if there is any.
    """
    with open_client() as client:
        report = client.verify()

    def human() -> None:
        click.echo(f"{report.keys} key version(s) across {len(report.members)} member(s), "
                   f"quorum {report.quorum}")
        for member in report.members:
            if not member.reachable:
                click.echo(f"  {member.name}: UNREACHABLE ({member.error})")
                continue
            state = "ok" if not member.drift and not member.weak else "DRIFT"
            click.echo(f"  {member.name}: {state}, {member.keys} key(s)")
            for key_id, version in member.missing:
                click.echo(f"    missing    {key_id} v{version}")
            for key_id, version in member.mismatched:
                click.echo(f"    other KCV  {key_id} v{version}")
            for key_id, version in member.orphans:
                click.echo(f"    orphan     {key_id} v{version} (below quorum)")
            for (key_id, version), problems in member.weak:
                click.echo(f"    weak       {key_id} v{version}: {', '.join(problems)}")
        click.echo("all members agree" if report.ok else "members disagree")
        for hint in report.hints:
            click.echo(f"  -> {hint}")

    emit(report.as_dict(), human)
    if not report.ok:
        drifted = [m.name for m in report.members if m.drift or m.weak]
        raise CLIError(f"cluster drift on {', '.join(drifted)}"
                       + (f"; {report.hints[0]}" if report.hints else ""))


@cluster.command("resync")
@click.argument("member", required=False, metavar="[MEMBER]")
@click.option("--destroy-orphans", is_flag=True,
              help="Also destroy every key version held by fewer members than the quorum "
                   "(no caller received it). Irreversible: asks first unless --yes.")
@click.option("--yes", is_flag=True, help="Do not ask before destroying orphans.")
@common_options
def resync(member: str | None, destroy_orphans: bool, yes: bool) -> None:
    """Bring MEMBER (default: every member) up to date now.

    Copies to it every key version that reached the quorum and it lacks (never a key only
    one member holds), and applies the destroys it missed. What hsm cluster verify reports
    as missing is gone afterwards.
    """
    with open_client() as client:
        if destroy_orphans and not yes:
            orphans = sorted({(k, v) for m in client.verify().members
                              for k, v in m.orphans})
            if orphans and not click.confirm(
                    f"destroy {len(orphans)} orphan key version(s) on every member holding "
                    "them? This cannot be undone", err=True):
                raise CLIError("nothing destroyed (not confirmed)")
        done = client.resync(member, destroy_orphans=destroy_orphans)

    def human() -> None:
        for name, refs in done["copied"].items():
            click.echo(f"{name}: {len(refs)} key version(s) copied")
            for key_id, version in refs:
                click.echo(f"  copied     {key_id} v{version}")
        for name, refs in done["destroyed"].items():
            for key_id, version in refs:
                click.echo(f"{name}: destroyed orphan {key_id} v{version}")
        for name, why in done["not_served"].items():
            click.echo(f"{name}: not brought up to date: {why}")

    emit({"copied": {n: [{"key_id": k, "version": v} for k, v in refs]
                     for n, refs in done["copied"].items()},
          "destroyed": {n: [{"key_id": k, "version": v} for k, v in refs]
                        for n, refs in done["destroyed"].items()},
          "not_served": done["not_served"]}, human)
    if done["not_served"]:
        raise CLIError("not brought up to date: " + "; ".join(
            f"{n}: {why}" for n, why in done["not_served"].items()))
