"""``python -m hsm.testing up DIR [--members N] [--name NAME]...`` / ``down DIR``: SoftHSM
harnesses from a shell.

The same command line as ``hsm harness`` (:mod:`hsm.testing.commands.harness`), with the
same options (``--dir DIR`` or DIR, ``--json``, ``--no-cluster-init``) and output: ``up``
prints the path of the harness's ``hsm.toml`` on stdout (and nothing else there).
Exit status: 0 done, 1 the harness could not be built or removed, 2 usage error.
"""

from hsm.cli import run
from hsm.testing.commands.harness import harness

if __name__ == "__main__":
    run(harness, prog_name="python -m hsm.testing")
