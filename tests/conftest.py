"""Shared fixtures: one SoftHSM harness per test module for the tests that don't break it.

Tests that damage a token (lost token directory, finalized module) build their own with
``hsm_harness_factory`` from the ``hsm`` pytest plugin.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

import hsm
from hsm.keys import KeyInfo
from hsm.testing import Harness, harness_down, harness_up

# No wall-clock deadlines in tests (the machines are shared and noisy): a property test is
# judged by what it finds, never by how long one example took.
settings.register_profile("hsm", deadline=None)
settings.load_profile("hsm")


@pytest.fixture(scope="module")
def shared_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """A one-member harness shared by the tests of one module."""
    directory = tmp_path_factory.mktemp("shared") / "harness"
    harness = harness_up(directory, 1)
    yield harness
    harness_down(directory)


@pytest.fixture(scope="module")
def client(shared_harness: Harness) -> Iterator[hsm.Client]:
    """An open client on the shared harness."""
    with hsm.open(shared_harness.config_path) as c:
        yield c


@pytest.fixture(scope="module")
def master_key(client: hsm.Client) -> KeyInfo:
    """One master key made on the shared harness."""
    return client.create_key()
