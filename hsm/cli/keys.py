"""``hsm key create`` and ``hsm key list``: master keys on the HSM."""

from __future__ import annotations

import click

from hsm.cli._common import common_options, emit, open_client
from hsm.keys import KeyInfo

__all__ = ["key"]


def _key_dict(info: KeyInfo) -> dict[str, object]:
    return {"key_id": info.key_id, "version": info.version, "kcv": info.kcv}


@click.group()
@common_options
def key() -> None:
    """Master keys: AES-256, created and kept inside the HSM."""


@key.command("create")
@common_options
def create() -> None:
    """Create a master key inside the HSM; print its id, version and check value."""
    with open_client() as client:
        info = client.create_key()
    emit(_key_dict(info), f"{info.key_id}  version {info.version}  kcv {info.kcv}")


@key.command("list")
@common_options
def list_() -> None:
    """List every master key version the cluster holds, with its check value and the
    members that hold it (a member that can't be asked is named, with why)."""
    with open_client() as client:
        keys, errors = client.key_members()
        total = len(client.members)

    def human() -> None:
        if not keys:
            click.echo("no master keys")
        else:
            click.echo(f"{'KEY ID':<36}  {'VERSION':>7}  {'KCV':<6}  MEMBERS")
            for info, names in keys:
                where = "all" if len(names) == total else ", ".join(names)
                click.echo(f"{info.key_id:<36}  {info.version:>7}  {info.kcv:<6}  "
                           f"{len(names)}/{total} ({where})")
        for name, why in errors.items():
            click.echo(f"not asked: {name}: {why}")

    emit({"keys": [{**_key_dict(info), "members": names} for info, names in keys],
          "unreachable": errors}, human)
