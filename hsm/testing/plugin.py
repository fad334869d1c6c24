"""The ``hsm`` pytest plugin: SoftHSM harnesses as fixtures (registered through ``pytest11``).

Fixtures (all function scope, each test gets fresh tokens in its own ``tmp_path``):

- ``hsm_harness_factory``: ``factory(members=1, *, names=None, faults=None,
  cluster_init=True) -> Harness``; every harness it made is torn down after the test
  (``faults``: see ``harness_up``; with several members the cluster ceremony has run).
- ``hsm_harness``: a one-member harness.
- ``hsm_config``: the path of that harness's ``hsm.toml``.
- ``hsm_client``: ``hsm.open(hsm_config)``, closed after the test.
- ``hsm_postgres``: a throwaway PostgreSQL server for the whole session
  (:mod:`hsm.testing.postgres`; ``HSM_TEST_POSTGRES_URL`` names an existing one instead).
- ``hsm_postgres_url``: the URL of a fresh, empty database on that server, per test.

Importing this plugin stays light (pytest loads it in every session of every project that
installs ``hsm``): it never imports ``pkcs11``, the client or the cluster. The fixtures that
need them import them when a test asks for them (``tests/testing/test_imports.py`` checks).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

from hsm.testing.harness import harness_down, harness_up
from hsm.testing.layout import Harness

if TYPE_CHECKING:
    from hsm.client import Client
    from hsm.testing.postgres import PostgresServer

__all__ = [
    "HarnessFactory",
    "hsm_client",
    "hsm_config",
    "hsm_harness",
    "hsm_harness_factory",
    "hsm_postgres",
    "hsm_postgres_url",
]


class HarnessFactory(Protocol):
    """What ``hsm_harness_factory`` gives: build a harness of ``members`` SoftHSM instances."""

    def __call__(self, members: int = 1, *, names: Sequence[str] | None = None,
                 faults: bool | None = None, cluster_init: bool = True) -> Harness: ...


@pytest.fixture
def hsm_harness_factory(tmp_path: Path) -> Iterator[HarnessFactory]:
    """Build SoftHSM harnesses under ``tmp_path``; all of them are removed after the test."""
    made: list[Path] = []

    def make(members: int = 1, *, names: Sequence[str] | None = None,
             faults: bool | None = None, cluster_init: bool = True) -> Harness:
        directory = tmp_path / f"hsm-harness-{len(made)}"
        made.append(directory)
        harness = harness_up(directory, members, names=names, faults=faults)
        if cluster_init and members > 1:
            # Several members: the ceremony, so that keys replicate at once.
            from hsm.cluster.ceremony import init_cluster
            from hsm.config import load_config

            init_cluster(load_config(harness.config_path))
        return harness

    yield make
    for directory in reversed(made):
        harness_down(directory)


@pytest.fixture
def hsm_harness(hsm_harness_factory: HarnessFactory) -> Harness:
    """A fresh one-member SoftHSM harness."""
    return hsm_harness_factory(1)


@pytest.fixture
def hsm_config(hsm_harness: Harness) -> Path:
    """The ``hsm.toml`` of ``hsm_harness``."""
    return hsm_harness.config_path


@pytest.fixture
def hsm_client(hsm_config: Path) -> Iterator[Client]:
    """A client opened on ``hsm_config`` with ``hsm.open``, closed after the test."""
    from hsm.client import open as open_client  # here: the plugin imports without the client

    with open_client(hsm_config) as client:
        yield client


@pytest.fixture(scope="session")
def hsm_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session: started once, stopped and removed at the end."""
    from hsm.testing.postgres import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture
def hsm_postgres_url(hsm_postgres: PostgresServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server: its SQLAlchemy URL."""
    return hsm_postgres.new_database()
