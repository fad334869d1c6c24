"""The ``hsm`` command line: ``hsm status``, ``hsm key ...``, ``hsm data-key``, ``hsm wrap``,
``hsm unwrap``, ``hsm harness ...``, ``hsm fault ...``. Run ``hsm --help`` for the list.
"""

from hsm.cli.main import cli, main

__all__ = ["cli", "main"]
