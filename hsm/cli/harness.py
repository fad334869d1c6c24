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
@common_options
def up(directory: Path, members: int) -> None:
    """Stand up a harness in DIR and print the path of its hsm.toml.

    For example: export HSM_CONFIG="$(hsm harness up --dir /tmp/h)"
    """
    from hsm.testing import harness_up

    built = harness_up(directory, members=members)
    emit(
        {"config": str(built.config_path), "directory": str(built.directory),
         "members": [m.name for m in built.members]},
        str(built.config_path),
    )


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
