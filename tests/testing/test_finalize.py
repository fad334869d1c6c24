"""``finalize_under`` and the primitive under it, ``Module.quiesced``: calls in flight finish
first, new calls wait, and calls resume (and recover) after."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import hsm
from hsm.pkcs11 import Module
from hsm.testing import faults

WAIT_S = 10.0


@pytest.fixture
def client(hsm_config: Path) -> Iterator[hsm.Client]:
    with hsm.open(hsm_config) as opened:
        module = opened.members[0].module
        assert module is not None
        module.reinit_interval = 0.0  # these tests don't wait for the recovery rate limit
        yield opened


def _module(client: hsm.Client) -> Module:
    module = client.members[0].module
    assert module is not None
    return module


@contextmanager
def _in_flight(module: Module) -> Iterator[tuple[threading.Event, threading.Thread]]:
    """A thread inside a call of ``module`` until the event is set (at the latest when the
    block ends, however it ends: then the thread is joined)."""
    entered, release = threading.Event(), threading.Event()

    def busy() -> None:
        with module.using():
            entered.set()
            release.wait(WAIT_S)

    thread = threading.Thread(target=busy, daemon=True)
    try:
        thread.start()
        assert entered.wait(WAIT_S)
        yield release, thread
    finally:
        release.set()
        thread.join(WAIT_S)


def test_finalize_under_waits_for_calls_in_flight(client: hsm.Client) -> None:
    """C_Finalize runs only once the call in flight returned; the next call fails, the one
    after recovers."""
    key = client.create_key()
    blob = client.wrap(key.key_id, b"q" * 32)
    module = _module(client)
    done = threading.Event()

    def finalize() -> None:
        faults.finalize_under(module)
        done.set()

    with _in_flight(module) as (release, busy):
        finalizer = threading.Thread(target=finalize, daemon=True)
        try:
            finalizer.start()
            assert not done.wait(0.2)  # held back by the call in flight
            release.set()
            assert done.wait(WAIT_S)
            busy.join(WAIT_S)
        finally:
            release.set()
            finalizer.join(WAIT_S)
    with pytest.raises(hsm.HSMUnavailable):
        client.unwrap(blob)
    assert client.unwrap(blob) == b"q" * 32


def test_quiesced_holds_new_calls_until_the_block_ends(client: hsm.Client) -> None:
    """A call started inside quiesced() waits for the block to end, then goes through."""
    module = _module(client)
    finished = threading.Event()

    def call() -> None:
        module.tokens()
        finished.set()

    caller = threading.Thread(target=call, daemon=True)
    try:
        with module.quiesced():
            caller.start()
            assert not finished.wait(0.2)
        assert finished.wait(WAIT_S)
    finally:
        caller.join(WAIT_S)  # quiesced() has ended: the call goes through
    assert client.create_key().version == 1  # calls go on as before


def test_quiesced_gives_up_on_calls_that_never_return(client: hsm.Client) -> None:
    """A call still in flight after drain_timeout: HSMUnavailable (hung calls), the block
    never runs, and the module serves calls as before."""
    module = _module(client)
    ran = False
    with _in_flight(module):
        with pytest.raises(hsm.HSMUnavailable) as caught, module.quiesced(drain_timeout=0.1):
            ran = True
        assert caught.value.reason == hsm.Reason.HUNG_CALLS
        assert not ran
    assert client.create_key().version == 1


def test_quiesced_lets_calls_resume_after_an_error_inside(client: hsm.Client) -> None:
    """An exception inside quiesced() propagates and leaves the module serving calls."""
    module = _module(client)
    with pytest.raises(RuntimeError, match="inside"), module.quiesced():
        raise RuntimeError("inside")
    assert module.ready
    assert client.create_key().version == 1
