"""Logins: a PIN the token refused is never sent to it again, and a refused login leaves no
session behind. Counted where the calls reach the module (the harness's shim)."""

from __future__ import annotations

from pathlib import Path

import pytest

import hsm
from hsm.errors import PinIncorrect, Reason
from hsm.pkcs11 import Module, PinSource, Secret, SecurityOfficer, SessionPool, TokenSelector
from hsm.testing import FaultInjector, Harness

WRONG = "wrong-pin-7f3a"  # never the harness's PIN: that one is random


def _wrong_pin_config(harness: Harness, path: Path, pin: str) -> Path:
    """A copy of the harness's hsm.toml whose member reads its PIN from ``pin``."""
    text = harness.config_path.read_text().replace(f'pin = "file:{harness.pin_file}"',
                                                   f'pin = "{pin}"')
    path.write_text(text)
    return path


def test_a_refused_pin_is_never_sent_again(
    hsm_harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the token refused a PIN, later pools and clients of this process raise
    PinIncorrect (naming the token) without calling C_Login: one attempt in all."""
    member = hsm_harness.members[0]
    faults = FaultInjector(hsm_harness)
    monkeypatch.setenv("HSM_TEST_WRONG_PIN", WRONG)
    source = PinSource.parse("env:HSM_TEST_WRONG_PIN")
    selector = TokenSelector(label=member.token_label)
    faults.count_calls(member, "C_Login")
    module = Module.acquire(member.module, member.env)
    try:
        for _ in range(3):
            with pytest.raises(PinIncorrect) as info:
                SessionPool.acquire(module, selector, source, size=2, name=member.name)
            assert info.value.reason is Reason.PIN_INCORRECT
            assert member.name in str(info.value)
            assert WRONG not in str(info.value)
        with pytest.raises(PinIncorrect):
            SessionPool(module, selector, source, size=1).open()
    finally:
        module.release()
    config = _wrong_pin_config(hsm_harness, tmp_path / "wrong.toml", "env:HSM_TEST_WRONG_PIN")
    for _ in range(2):
        with pytest.raises(hsm.PinIncorrect):
            hsm.open(config)
    # The same wrong PIN from another source is not tried either.
    pin_file = tmp_path / "wrong-pin"
    pin_file.write_text(WRONG)
    pin_file.chmod(0o600)
    with pytest.raises(hsm.PinIncorrect):
        hsm.open(_wrong_pin_config(hsm_harness, tmp_path / "file.toml", f"file:{pin_file}"))
    assert faults.stop_counting(member)["C_Login"] == 1
    with hsm.open(hsm_harness.config_path) as client:  # the right PIN still logs in
        assert client.list_keys() == []


def test_a_refused_login_closes_the_session_it_opened(
    hsm_harness: Harness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong user PIN, or a wrong SO PIN, leaves no session open on the token: every
    C_OpenSession made for the login is matched by a C_CloseSession."""
    member = hsm_harness.members[0]
    faults = FaultInjector(hsm_harness)
    monkeypatch.setenv("HSM_TEST_WRONG_PIN", WRONG)
    selector = TokenSelector(label=member.token_label)
    module = Module.acquire(member.module, member.env)
    try:
        faults.count_calls(member, ["C_OpenSession", "C_CloseSession", "C_Login"])
        with pytest.raises(PinIncorrect):
            SessionPool(module, selector, PinSource.parse("env:HSM_TEST_WRONG_PIN"),
                        size=1).open()
        with pytest.raises(PinIncorrect), SecurityOfficer(module, selector, Secret(WRONG)):
            pass
        counts = faults.stop_counting(member)
    finally:
        module.release()
    assert counts["C_Login"] == 2
    assert counts["C_OpenSession"] == counts["C_CloseSession"] == 2
