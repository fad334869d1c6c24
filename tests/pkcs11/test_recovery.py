"""Recovery: lost tokens, finalized modules, generations, against real SoftHSM instances."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import hsm
from hsm.errors import Reason
from hsm.pkcs11 import Module
from hsm.testing import FaultInjector, Harness
from hsm.testing.plugin import HarnessFactory


@pytest.fixture
def harness(hsm_harness_factory: HarnessFactory) -> Harness:
    return hsm_harness_factory(1)


@pytest.fixture
def client(harness: Harness) -> Iterator[hsm.Client]:
    with hsm.open(harness.config_path) as c:
        # Recovery is rate-limited (default: once per 5 s); these tests don't wait.
        _module(c).reinit_interval = 0.0
        yield c


def _module(client: hsm.Client) -> Module:
    module = client._primary.module
    assert module is not None
    return module


def _token_dir(harness: Harness) -> Path:
    return harness.members[0].directory / "tokens"


def test_lost_token_is_transient_and_heals(harness: Harness, client: hsm.Client) -> None:
    """With the token directory gone, calls fail as HSMUnavailable (never KeyNotFound); once it
    is back, the module is re-initialized and the old blobs open again."""
    key = client.create_key()
    dk = client.generate_data_key(key.key_id, context={"a": "b"})
    generation = _module(client).generation
    tokens = _token_dir(harness)
    lost = tokens.with_name("tokens.lost")
    tokens.rename(lost)
    try:
        for _ in range(3):
            with pytest.raises(hsm.HSMUnavailable) as info:
                client.unwrap(dk.wrapped, context={"a": "b"})
            assert info.value.transient
    finally:
        lost.rename(tokens)
    assert client.unwrap(dk.wrapped, context={"a": "b"}) == dk.plaintext
    assert _module(client).generation > generation
    again = client.generate_data_key(key.key_id)
    assert client.unwrap(again.wrapped) == again.plaintext


def test_loading_a_module_whose_token_is_lost_is_transient(harness: Harness) -> None:
    """With its token directory gone, SoftHSM's C_Initialize fails: loading the module is a
    transient HSMUnavailable (module_init_failed) that names the module and what
    C_Initialize answered, and the module loads once the token is back."""
    member = harness.members[0]
    faults = FaultInjector(harness)
    faults.lose_token(member)
    try:
        for _ in range(2):  # not remembered as permanent: each attempt tries again
            with pytest.raises(hsm.HSMUnavailable) as info:
                Module.acquire(member.module, member.env)
            error = info.value
            assert error.transient
            assert error.reason is Reason.MODULE_INIT_FAILED
            assert str(member.module) in error.message
            assert "C_Initialize answered GeneralError" in error.message
            assert not error.message.rstrip().endswith(":")
    finally:
        faults.heal(member)
    module = Module.acquire(member.module, member.env)
    module.release()


def test_a_re_initialize_without_the_token_says_what_failed(harness: Harness,
                                                           client: hsm.Client) -> None:
    """A re-initialize while the token directory is gone fails transiently with
    module_init_failed, naming the module and C_Initialize's answer; it recovers after."""
    module = _module(client)
    faults = FaultInjector(harness)
    faults.lose_token(harness.members[0])
    try:
        with pytest.raises(hsm.HSMUnavailable) as info:
            module.reinitialize(module.generation)
    finally:
        faults.heal(harness.members[0])
    assert info.value.reason is Reason.MODULE_INIT_FAILED
    assert module.path in info.value.message
    assert "GeneralError" in info.value.message
    module.reinitialize(module.generation)
    assert client.generate_random(4)


def test_module_finalized_under_the_client(client: hsm.Client) -> None:
    """If other code finalizes the module, the next call fails transiently and the one
    after recovers by itself."""
    key = client.create_key()
    blob = client.wrap(key.key_id, b"k" * 32)
    module = _module(client)
    generation = module.generation
    module.lib.finalize()
    with pytest.raises(hsm.HSMUnavailable):
        client.unwrap(blob)
    assert client.unwrap(blob) == b"k" * 32
    assert module.generation == generation + 1


def test_recovery_is_rate_limited(harness: Harness, client: hsm.Client) -> None:
    """Within the re-initialize interval a broken module fails fast instead of reloading
    again; after it, recovery goes ahead."""
    now = [1000.0]
    module = _module(client)
    module._clock = lambda: now[0]
    module.reinit_interval = 30.0
    key = client.create_key()
    blob = client.wrap(key.key_id, bytes(32))
    module.lib.finalize()
    with pytest.raises(hsm.HSMUnavailable):
        client.unwrap(blob)
    assert client.unwrap(blob) == bytes(32)  # first recovery: allowed
    module.lib.finalize()
    with pytest.raises(hsm.HSMUnavailable):
        client.unwrap(blob)
    with pytest.raises(hsm.HSMUnavailable, match="recovering"):
        client.unwrap(blob)  # 0 s later: refused, no reload
    now[0] += 31
    assert client.unwrap(blob) == bytes(32)


def test_sessions_of_an_old_generation_are_never_reused(client: hsm.Client) -> None:
    """After a re-initialize, no session or key object from before is lent again."""
    key = client.create_key()
    blob = client.wrap(key.key_id, bytes(32))
    pool = client._keyring.pool
    with pool.session() as before:
        assert before.keys
    module = _module(client)
    module.reinitialize(module.generation)
    assert client.unwrap(blob) == bytes(32)
    with pool.session() as after:
        assert after is not before
        assert after.generation == module.generation > before.generation


def test_a_forked_child_reinitializes_before_use(client: hsm.Client) -> None:
    """A client inherited through fork() re-initializes the module in the child and works
    there; the parent is unaffected."""
    key = client.create_key()
    blob = client.wrap(key.key_id, b"f" * 32)
    pid = os.fork()
    if pid == 0:  # the child: any failure is its exit status
        code = 1
        try:
            if client.unwrap(blob) == b"f" * 32 and _module(client).generation > 1:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.unwrap(blob) == b"f" * 32


def test_a_lost_session_is_replaced(client: hsm.Client) -> None:
    """A worker session closed behind the pool's back fails one call transiently, is dropped,
    and the next call gets a fresh session."""
    key = client.create_key()
    blob = client.wrap(key.key_id, bytes(32))
    pool = client._keyring.pool
    with pool.session() as lease:
        lease.session.close()  # the HSM forgets it; our lease doesn't know yet
    with pytest.raises(hsm.HSMUnavailable) as info:
        client.unwrap(blob)
    assert info.value.reason in (Reason.SESSION_HANDLE_INVALID, Reason.SESSION_CLOSED)
    assert client.unwrap(blob) == bytes(32)
    with pool.session() as fresh:
        assert fresh is not lease
