"""SoftHSM-backed test harnesses, shipped with :mod:`hsm` for its users' own tests.

A user project gets tests against a real (software) HSM with one fixture: install
``hsm`` and SoftHSM2 (``apt-get install softhsm2``); the ``hsm`` pytest plugin is
registered automatically, so a test just asks for it::

    def test_round_trip(hsm_client):        # a client on a fresh one-member SoftHSM
        ...

Other fixtures: ``hsm_harness`` (the :class:`Harness`), ``hsm_config`` (its ``hsm.toml``)
and ``hsm_harness_factory`` (``factory(members=3)`` for clusters). Outside pytest, use
:func:`harness_up` / :func:`harness_down`, or ``python -m hsm.testing up DIR --members N``
(the same command line as ``hsm harness``).

Faults: each harness member loads SoftHSM through its own pass-through PKCS#11 module, so
:class:`FaultInjector` (or ``hsm fault ...``) can make it return any CKR code, slow down,
hang, or lose its token, and heal it again (``docs/FAULTS.md``)::

    faults = FaultInjector(harness)
    faults.inject("hsm-a", "DEVICE_ERROR")
    ...
    faults.heal("hsm-a")

The names below are imported when first used (PEP 562), so that ``import hsm.testing`` and
the pytest plugin stay light; the modules: :mod:`~hsm.testing.layout` (what a harness is),
:mod:`~hsm.testing.harness` (up, down, load), :mod:`~hsm.testing.softhsm`,
:mod:`~hsm.testing.shim`, :mod:`~hsm.testing.control` (the control file),
:mod:`~hsm.testing.faults`, :mod:`~hsm.testing.drill`, :mod:`~hsm.testing.fakes`,
:mod:`~hsm.testing.plugin` and :mod:`~hsm.testing.commands` (``hsm harness``,
``hsm fault``, ``hsm drill``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hsm.testing.control import Fault
    from hsm.testing.faults import FaultInjector
    from hsm.testing.harness import harness_down, harness_up, load_harness
    from hsm.testing.layout import Harness, HarnessError, HarnessMember
    from hsm.testing.softhsm import find_softhsm_module

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

# Where each public name lives.
_HOMES = {
    "Fault": "hsm.testing.control",
    "FaultInjector": "hsm.testing.faults",
    "Harness": "hsm.testing.layout",
    "HarnessError": "hsm.testing.layout",
    "HarnessMember": "hsm.testing.layout",
    "find_softhsm_module": "hsm.testing.softhsm",
    "harness_down": "hsm.testing.harness",
    "harness_up": "hsm.testing.harness",
    "load_harness": "hsm.testing.harness",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # found once; later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
