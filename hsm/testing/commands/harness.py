"""``hsm harness up`` / ``hsm harness down``: SoftHSM test harnesses from a shell.

The same group is ``python -m hsm.testing`` (DIR may be given as an argument or as
``--dir``: ``python -m hsm.testing up DIR --members 3``). :mod:`hsm.testing.harness` is
imported when a command runs: ``hsm --help`` imports this module for its one-line help, and
stays ~10 ms faster without it.
"""

from __future__ import annotations

from pathlib import Path

import click

from hsm.cli import HSMGroup
from hsm.cli._common import common_options, emit

__all__ = ["harness"]

_DIR = click.Path(file_okay=False, path_type=Path)


@click.group(cls=HSMGroup, context_settings={"help_option_names": ["-h", "--help"]})
@common_options
def harness() -> None:
    """SoftHSM harnesses for tests: independent SoftHSM instances in a directory.

    --config is accepted for uniformity and ignored: a harness writes its own config.
    """


def _directory(ctx: click.Context, given: Path | None, option: Path | None) -> Path:
    """DIR, given as the argument or as --dir (both: they must agree)."""
    if given is not None and option is not None and given != option:
        raise click.UsageError(f"two directories given ({given} and --dir {option}); "
                               "give one", ctx=ctx)
    chosen = option if option is not None else given
    if chosen is None:
        param = next(p for p in ctx.command.params if p.name == "directory")
        raise click.MissingParameter(ctx=ctx, param=param)
    return chosen


_dir_argument = click.argument("given", metavar="[DIR]", required=False, type=_DIR)


@harness.command("up")
@_dir_argument
@click.option("--dir", "directory", type=_DIR, metavar="DIR",
              help="Directory for the harness (created; re-used if it already holds one). "
                   "Or give it as DIR.")
@click.option("--members", type=click.IntRange(min=1), metavar="N",
              help="Number of SoftHSM instances.  [default: 1, or one per --name]")
@click.option("--name", "names", multiple=True, metavar="NAME",
              help="Member name, once per member (default: hsm-a, hsm-b, ...).")
@click.option("--faults/--no-faults", default=None,
              help="Load every member through the fault-injection module (--faults: refuse "
                   "to come up without it, e.g. with no C compiler; --no-faults: never). "
                   "Default: use it when it can be built.")
@click.option("--cluster-init/--no-cluster-init", default=True, show_default=True,
              help="With several members, run the cluster ceremony (hsm cluster init) so "
                   "that keys can be replicated at once.")
@common_options
@click.pass_context
def up(ctx: click.Context, given: Path | None, directory: Path | None, members: int | None,
       names: tuple[str, ...], faults: bool | None, cluster_init: bool) -> None:
    """Stand up a harness in DIR and print the path of its hsm.toml.

    For example: export HSM_CONFIG="$(hsm harness up --dir /tmp/h --members 3)"
    """
    from hsm.testing.harness import harness_up  # here: see the module docstring

    target = _directory(ctx, given, directory)
    count = members if members is not None else (len(names) or 1)
    built = harness_up(target, members=count, names=list(names) if names else None,
                       faults=faults)
    data: dict[str, object] = {"config": str(built.config_path),
                               "directory": str(built.directory),
                               "members": [m.name for m in built.members]}
    if cluster_init and count > 1:
        # Here: the ceremony loads the PKCS#11 edge, which `hsm --help` must not.
        from hsm.cluster.ceremony import init_cluster
        from hsm.config import load_config

        data["cluster_wrapping_kcv"] = init_cluster(load_config(built.config_path)).kcv
    emit(data, str(built.config_path))


@harness.command("down")
@_dir_argument
@click.option("--dir", "directory", type=_DIR, metavar="DIR",
              help="The harness directory to remove. Or give it as DIR.")
@common_options
@click.pass_context
def down(ctx: click.Context, given: Path | None, directory: Path | None) -> None:
    """Remove the harness in DIR (refused if DIR is not a harness)."""
    from hsm.testing.harness import harness_down  # here: see the module docstring

    target = _directory(ctx, given, directory)
    harness_down(target)
    removed = str(target.expanduser().absolute())
    emit({"removed": removed}, f"removed {removed}")
