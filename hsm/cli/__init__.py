"""The ``hsm`` command line: ``hsm status``, ``hsm key ...``, ``hsm data-key``, ``hsm wrap``,
``hsm unwrap``, ``hsm encrypt``, ``hsm decrypt``, ``hsm cluster ...``, and the commands
installed packages add through the ``hsm.commands`` entry points (``hsm harness ...``,
``hsm fault ...``, ``hsm drill`` from :mod:`hsm.testing.commands`). Run ``hsm --help``
for the list.
"""

from hsm.cli.main import ENTRY_POINT_GROUP, HSMGroup, cli, main, run

__all__ = ["ENTRY_POINT_GROUP", "HSMGroup", "cli", "main", "run"]
