"""SoftHSM-backed test harnesses, shipped with :mod:`hsm` for its users' own tests.

A user project gets tests against a real (software) HSM with one fixture: install
``hsm`` and SoftHSM2 (``apt-get install softhsm2``); the ``hsm`` pytest plugin is
registered automatically, so a test just asks for it::

    def test_round_trip(hsm_client):        # a client on a fresh one-member SoftHSM
        ...

Other fixtures: ``hsm_harness`` (the :class:`Harness`), ``hsm_config`` (its ``hsm.toml``)
and ``hsm_harness_factory`` (``factory(members=3)`` for clusters). Outside pytest, use
:func:`harness_up` / :func:`harness_down`, or ``python -m hsm.testing up DIR --members N``.

Faults: each harness member loads SoftHSM through its own pass-through PKCS#11 module, so
:class:`FaultInjector` (or ``hsm fault ...``) can make it return any CKR code, slow down,
hang, or lose its token, and heal it again (``docs/FAULTS.md``)::

    faults = FaultInjector(harness)
    faults.inject("hsm-a", "DEVICE_ERROR")
    ...
    faults.heal("hsm-a")
"""

from hsm.testing.faults import Fault, FaultInjector
from hsm.testing.softhsm import (
    Harness,
    HarnessError,
    HarnessMember,
    find_softhsm_module,
    harness_down,
    harness_up,
    load_harness,
)

__all__ = [
    "Fault",
    "FaultInjector",
    "Harness",
    "HarnessError",
    "HarnessMember",
    "find_softhsm_module",
    "harness_down",
    "harness_up",
    "load_harness",
]
