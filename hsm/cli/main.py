"""The ``hsm`` command group, and the one place where errors become exit statuses.

Every :class:`~hsm.errors.HSMError` raised by a command (a missing config included) becomes
one ``hsm: error: <message>`` line on stderr and exit status 1, never a traceback. Usage
errors are click's: a usage message and exit status 2.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from hsm import __version__
from hsm.cli._common import CLIError, common_options, describe
from hsm.cli.cluster import cluster
from hsm.cli.datakeys import data_key, unwrap, wrap
from hsm.cli.drill import drill
from hsm.cli.envelope import decrypt, encrypt
from hsm.cli.fault import fault
from hsm.cli.harness import harness
from hsm.cli.keys import key
from hsm.cli.status import status
from hsm.errors import HSMError

__all__ = ["cli", "main"]


class _Group(click.Group):
    """A click group that turns every :class:`HSMError` below it into :class:`CLIError`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HSMError as exc:
            raise CLIError(describe(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
cli.add_command(harness)
cli.add_command(cluster)
cli.add_command(fault)
cli.add_command(drill)


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


def main() -> None:
    """Console-script entry point (``hsm = "hsm.cli:main"``)."""
    _log_to_stderr()
    cli.main(prog_name="hsm")
