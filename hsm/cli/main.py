"""The ``hsm`` command group, the one place where errors become exit statuses, and the
discovery of commands that other packages add.

Every :class:`~hsm.errors.HSMError` raised by a command (a missing config included) becomes
one ``hsm: error: <message>`` line on stderr and exit status 1, never a traceback. Usage
errors are click's: a usage message and exit status 2.

Commands beyond the core ones come from the ``hsm.commands`` entry-point group (in a
distribution's metadata: ``name = "package.module:click_command"``): ``hsm`` itself
registers ``harness``, ``fault`` and ``drill`` there, from :mod:`hsm.testing.commands`, so
that this package never imports :mod:`hsm.testing`. Such a command's module is imported
only when the command runs or when the help lists it; a built-in command of the same name
wins, and a command that fails to load is listed as broken and exits 1 when run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import click

from hsm import __version__
from hsm.cli._common import CLIError, common_options, describe
from hsm.cli.cluster import cluster
from hsm.cli.datakeys import data_key, unwrap, wrap
from hsm.cli.envelope import decrypt, encrypt
from hsm.cli.keys import key
from hsm.cli.status import status
from hsm.errors import HSMError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["ENTRY_POINT_GROUP", "HSMGroup", "cli", "main", "run"]

#: The entry-point group that adds commands to ``hsm``.
ENTRY_POINT_GROUP = "hsm.commands"


class HSMGroup(click.Group):
    """A click group that turns every :class:`HSMError` below it into :class:`CLIError`.

    For ``hsm`` itself and for any group that is also run as a program of its own (see
    :func:`run`), such as ``python -m hsm.testing``.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HSMError as exc:
            raise CLIError(describe(exc)) from None


class _Commands(HSMGroup):
    """``hsm``: the built-in commands, then those of the ``hsm.commands`` entry points,
    loaded when asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._entry_points: dict[str, EntryPoint] | None = None

    def entry_points(self) -> dict[str, EntryPoint]:
        """The commands registered by installed packages, by name (read once)."""
        if self._entry_points is None:
            # Here, not at the top: importlib.metadata costs ~20 ms, and most commands
            # (built in) never need it.
            from importlib.metadata import entry_points

            found: dict[str, EntryPoint] = {}
            for point in entry_points(group=ENTRY_POINT_GROUP):
                found.setdefault(point.name, point)  # the first registration wins
            self._entry_points = found
        return self._entry_points

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.entry_points()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.commands.get(cmd_name)
        if command is not None:
            return command
        point = self.entry_points().get(cmd_name)
        if point is None:
            return None
        command = _load(point)
        self.commands[cmd_name] = command  # loaded once
        return command


def _load(point: EntryPoint) -> click.Command:
    """The command ``point`` names, or a stand-in that says why it can't be had."""
    try:
        loaded = point.load()
    except Exception as exc:  # whatever a broken plugin raises, `hsm --help` still works
        return _broken(point, f"{type(exc).__name__}: {exc}")
    if not isinstance(loaded, click.Command):
        return _broken(point, f"{type(loaded).__name__} is not a click command")
    return loaded


def _broken(point: EntryPoint, why: str) -> click.Command:
    message = f"command {point.name!r} ({point.value}) can't be loaded: {why}"

    def fail() -> None:
        raise CLIError(message)

    return click.Command(
        point.name, callback=fail, help=message, short_help="(can't be loaded; run it for why)",
        add_help_option=False,  # `hsm NAME --help` says why, too
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hsm")
@common_options
def cli() -> None:
    """Master keys in HSMs over PKCS#11, used the way a cloud KMS uses them.

    The config is found via --config, else $HSM_CONFIG, else ./hsm.toml. Every command
    takes --json (one JSON object on stdout). Exit status: 0 done, 1 the operation failed
    (one line on stderr), 2 usage error.
    """


cli.add_command(status)
cli.add_command(key)
cli.add_command(data_key)
cli.add_command(wrap)
cli.add_command(unwrap)
cli.add_command(encrypt)
cli.add_command(decrypt)
cli.add_command(cluster)


class _WarningFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"hsm: {record.levelname.lower()}: {record.getMessage()}"


def _log_to_stderr() -> None:
    """Library warnings (a world-readable PIN file...) as ``hsm: warning: ...`` lines."""
    logger = logging.getLogger("hsm")
    if not logger.handlers:
        handler = logging.StreamHandler()  # stderr: stdout belongs to the command's output
        handler.setFormatter(_WarningFormatter())
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)


def run(command: click.Command, *, prog_name: str) -> None:
    """Run ``command`` as a program: library warnings on stderr as ``hsm: warning:`` lines,
    exit statuses as for ``hsm`` (``command`` should be an :class:`HSMGroup`)."""
    _log_to_stderr()
    command.main(prog_name=prog_name)


def main() -> None:
    """Console-script entry point (``hsm = "hsm.cli:main"``)."""
    run(cli, prog_name="hsm")
