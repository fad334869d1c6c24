"""``hsm harness up`` / ``hsm harness down``: SoftHSM test harnesses from a shell.

``hsm.testing`` is imported inside the commands: the rest of the CLI never needs it.
"""

from __future__ import annotations

from pathlib import Path

import click

from hsm.cli._common import common_options, emit

__all__ = ["harness"]

_DIR = click.Path(file_okay=False, path_type=Path)


@click.group()
@common_options
def harness() -> None:
    """SoftHSM harnesses for tests: independent SoftHSM instances in a directory.

    --config is accepted for uniformity and ignored: a harness writes its own config.
    """


@harness.command("up")
@click.option("--dir", "directory", required=True, type=_DIR, metavar="DIR",
              help="Directory for the harness (created; re-used if it already holds one).")
@click.option("--members", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="N", help="Number of SoftHSM instances.")
@click.option("--cluster-init/--no-cluster-init", default=True, show_default=True,
              help="With several members, run the cluster ceremony (hsm cluster init) so "
                   "that keys can be replicated at once.")
@common_options
def up(directory: Path, members: int, cluster_init: bool) -> None:
    """Stand up a harness in DIR and print the path of its hsm.toml.

    For example: export HSM_CONFIG="$(hsm harness up --dir /tmp/h --members 3)"
    """
    from hsm.testing import harness_up

    built = harness_up(directory, members=members)
    data: dict[str, object] = {"config": str(built.config_path),
                               "directory": str(built.directory),
                               "members": [m.name for m in built.members]}
    if cluster_init and members > 1:
        from hsm.cluster.ceremony import init_cluster
        from hsm.config import load_config

        data["cluster_wrapping_kcv"] = init_cluster(load_config(built.config_path)).kcv
    emit(data, str(built.config_path))


@harness.command("down")
@click.option("--dir", "directory", required=True, type=_DIR, metavar="DIR",
              help="The harness directory to remove.")
@common_options
def down(directory: Path) -> None:
    """Remove the harness in DIR (refused if DIR is not a harness)."""
    from hsm.testing import harness_down

    harness_down(directory)
    removed = str(directory.expanduser().absolute())
    emit({"removed": removed}, f"removed {removed}")
