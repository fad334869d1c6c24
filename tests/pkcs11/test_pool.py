"""The session pool: bounded, lent through a context manager, sessions reused."""

from __future__ import annotations

import threading

import pytest

import hsm
from hsm.errors import Reason
from hsm.pkcs11 import Module, PinSource, SessionPool, TokenSelector, native
from hsm.testing import FaultInjector, Harness


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


def test_pool_size_beyond_the_modules_session_limit_is_refused(
    hsm_harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool needing more sessions than the module gives one process (pool_size + the
    login session) is a ConfigError naming pool_size and the limit, raised before any login;
    SoftHSM itself reports no limit."""
    member = hsm_harness.members[0]
    selector = TokenSelector(label=member.token_label)
    pin = PinSource.parse(f"file:{hsm_harness.pin_file}")
    faults = FaultInjector(hsm_harness)
    module = Module.acquire(member.module, member.env)
    try:
        token = module.find_token(selector)
        assert module.session_limits(token) == native.SessionLimits(None, None)
        # A module with limits (SoftHSM has none; the token and every other call stay real).
        monkeypatch.setattr(native, "session_limits",
                            lambda path, slot: native.SessionLimits(16, 8))
        faults.count_calls(member, "C_Login")
        with pytest.raises(hsm.ConfigError) as info:
            SessionPool(module, selector, pin, size=8).open()
        assert "pool_size = 8" in str(info.value)
        assert "at most 8 read-write sessions" in str(info.value)
        assert "at most 7" in str(info.value)
        assert faults.stop_counting(member)["C_Login"] == 0
        SessionPool(module, selector, pin, size=7).open().close()
    finally:
        module.release()
