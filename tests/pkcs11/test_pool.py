"""The session pool: bounded, lent through a context manager, sessions reused."""

from __future__ import annotations

import threading

import pytest

import hsm
from hsm.errors import Reason
from hsm.pkcs11 import SessionPool
from hsm.testing import Harness


def test_pool_is_bounded_and_times_out(hsm_harness: Harness) -> None:
    """With every session lent, the next borrower waits, then gets a transient error; a
    returned session is lent again."""
    with hsm.open(hsm_harness.config_path) as client:
        pool: SessionPool = client._keyring.pool
        pool.acquire_timeout = 0.2
        held = [pool.session() for _ in range(pool.size)]
        leases = [h.__enter__() for h in held]
        assert len({id(lease.session) for lease in leases}) == pool.size
        with pytest.raises(hsm.HSMUnavailable) as info, pool.session():
            pass
        assert info.value.reason is Reason.POOL_EXHAUSTED
        released = threading.Event()

        def give_back_one() -> None:
            held[0].__exit__(None, None, None)
            released.set()

        threading.Timer(0.05, give_back_one).start()
        pool.acquire_timeout = 5.0
        with pool.session() as lease:
            assert released.is_set()
            assert lease is leases[0]
        for h in held[1:]:
            h.__exit__(None, None, None)


def test_sessions_are_reused(hsm_client: hsm.Client) -> None:
    """Consecutive calls reuse an idle worker session instead of opening a new one."""
    pool = hsm_client._keyring.pool
    with pool.session() as first:
        pass
    with pool.session() as second:
        pass
    assert first is second


def test_an_unknown_error_inside_discards_the_session(hsm_client: hsm.Client) -> None:
    """A non-HSM exception inside a lease discards that session (its state is unknown) and
    the pool keeps working."""
    pool = hsm_client._keyring.pool
    with pool.session() as before:
        pass

    def fail_inside() -> None:
        with pool.session() as lease:
            assert lease is before
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_inside()
    with pool.session() as after:
        assert after is not before
    key = hsm_client.create_key()
    assert hsm_client.unwrap(hsm_client.wrap(key.key_id, bytes(32))) == bytes(32)
