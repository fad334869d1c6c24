"""The testing package's own command line: ``hsm harness ...``, ``hsm fault ...`` and
``hsm drill``.

``hsm`` finds these through the ``hsm.commands`` entry points in ``pyproject.toml`` (see
:mod:`hsm.cli.main`), never by importing :mod:`hsm.testing`; ``python -m hsm.testing`` runs
the ``harness`` group on its own. Each module imports what its commands need to build
their options; the heavier parts (the drill, the cluster ceremony) only when they run, so
that ``hsm --help`` stays cheap.
"""
